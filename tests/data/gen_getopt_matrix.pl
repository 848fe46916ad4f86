#!/usr/bin/perl
#
# Ground truth for the command-line parsing of the reference start_server
# (Server::Starter 0.35, /usr/bin/start_server) as done by Getopt::Long.
#
#   perl tests/data/gen_getopt_matrix.pl > tests/data/getopt_matrix.tsv
#
# One output line per case, tab separated:
#
#   <posix 0|1> \t <argv as JSON array> \t <ok|error> \t <result>
#
# ok:    result = {"argv":[remaining args],"opts":{...}}; opts holds only the
#        options that were set, keyed by their dashed long name; port/path are
#        arrays of strings (omitted when empty), flags are the number 1, every
#        other value is the string Perl stores (integers after Getopt::Long's
#        numification: "+5" -> "5", "05" -> "5", "1_000" -> "1000").
# error: result = JSON string: the warnings GetOptions emitted, concatenated
#        (this is exactly what start_server prints on stderr before exit 1).
#
# Only GetOptions' own result is recorded; what the script does afterwards
# (--help, --version, --daemonize without --log-file, no program) is not.
#
# POSIXLY_CORRECT: Getopt::Long reads it in ConfigDefaults(), which runs when
# the module is loaded. For each case we set/delete $ENV{POSIXLY_CORRECT} and
# call Getopt::Long::ConfigDefaults() again, which resets every setting to what
# a fresh load under that environment gives. (This is checked by --verify.)
#
#   perl tests/data/gen_getopt_matrix.pl --verify
#
# runs every case through the real /usr/bin/start_server in its own process
# (environment set before Getopt::Long is loaded), with Server::Starter's
# start_server/restart_server/stop_server replaced by a stub that dumps the
# parsed options and @ARGV, and checks the result against the in-process one
# (including the exact stderr and exit status 1 on parse errors).

use strict;
use warnings;

use Getopt::Long;
use JSON::PP;

my $JSON = JSON::PP->new->canonical(1)->ascii(1)->allow_nonref(1);

my @FLAGS = qw(enable-auto-restart daemonize restart stop help version);
my %IS_FLAG = map { $_ => 1 } @FLAGS;

# ---------------------------------------------------------------------------
# The cases. c(...) = POSIXLY_CORRECT unset, p(...) = POSIXLY_CORRECT set.

my @CASES;
sub c { push @CASES, [0, [@_]] }
sub p { push @CASES, [1, [@_]] }

# every option: --x=v, --x v, -x=v, -x v
my %sample = (
    'port' => '80', 'path' => '/tmp/s.sock', 'interval' => '5',
    'log-file' => '/tmp/log', 'pid-file' => '/tmp/pid', 'dir' => '/srv',
    'signal-on-hup' => 'USR1', 'signal-on-term' => 'QUIT', 'backlog' => '128',
    'envdir' => '/etc/env', 'auto-restart-interval' => '60',
    'kill-old-delay' => '3', 'status-file' => '/tmp/status',
);
for my $o (qw(port path interval log-file pid-file dir signal-on-hup
              signal-on-term backlog envdir auto-restart-interval
              kill-old-delay status-file)) {
    my $v = $sample{$o};
    c("--$o=$v", 'app');
    c("--$o", $v, 'app');
    c("-$o=$v", 'app');
    c("-$o", $v, 'app');
}
for my $o (@FLAGS) {
    c("--$o", 'app');
    c("-$o", 'app');
    c("+$o", 'app');
}

# unique abbreviations
c('--pid', 'x', 'app');
c('--pid=x', 'app');
c('--stat', 'y', 'app');
c('--sta=y', 'app');
c('--int', '5', 'app');
c('--int=5', 'app');
c('--i', '5', 'app');
c('--env', '/e', 'app');
c('--en', 'app');
c('--en=/e', 'app');
c('--enable', 'app');
c('--ena', 'app');
c('--enable-auto', 'app');
c('--auto', '5', 'app');
c('--a=5', 'app');
c('--kill', '5', 'app');
c('--k=5', 'app');
c('--log', 'l', 'app');
c('--l=l', 'app');
c('--dae', 'app');
c('--da', 'app');
c('--di=/srv', 'app');
c('--ba', '5', 'app');
c('--b=5', 'app');
c('--sig', 'USR1', 'app');
c('--signal-on-h', 'USR1', 'app');
c('--signal-on-t=QUIT', 'app');
c('--st', 'app');
c('--sto', 'app');
c('--res', 'app');
c('--re', 'app');
c('--r', 'app');
c('--h');
c('--he');
c('--v');
c('--ver');
c('--po=80', 'app');
c('--pa=/s', 'app');
c('--pi=x', 'app');

# ambiguous prefixes
c('--s', 'app');
c('--s=x', 'app');
c('--p', '80', 'app');
c('--p=80', 'app');
c('--d', 'app');
c('--e', 'app');
c('-p', '80', 'app');
c('-s', 'app');
c('--si', 'x', 'app');
c('--signal-on', 'x', 'app');
c('--signal-on-', 'x', 'app');
c('+s', 'app');
c('--P=80', 'app');

# single letters, one and two dashes
c('-i', '5', 'app');
c('--i=5', 'app');
c('-l', 'x', 'app');
c('-b', '5', 'app');
c('-k', '5', 'app');
c('-a', '5', 'app');
c('-r');
c('-h');
c('-v');
c('-e', 'app');
c('-d', 'app');
c('-x', 'app');

# case variations
c('--PORT=80', 'app');
c('--Pid-File', 'x', 'app');
c('-Port', '80', 'app');
c('--HELP');
c('--Daemonize', 'app');
c('--PORT=ABC', 'app');
c('--PO=80', 'app');
c('--FOO', 'app');
c('--S', 'app');

# getopt_compat '+' prefix
c('+port=80', 'app');
c('+port', '80', 'app');
c('+pid', 'x', 'app');
c('+foo', 'app');
c('+', 'app');
c('+5', 'app');
c('app', '+port=80');

# repeated options
c('--port=80', '--port=81', 'app');
c('--port', '80', '--path', '/a', '--port', '81', '--path', '/b', 'app');
c('--port=80', '--port=80', 'app');
c('--interval=1', '--interval=2', 'app');
c('--pid-file=a', '--pid-file=b', 'app');
c('--daemonize', '--daemonize', 'app');
c('--signal-on-hup=USR1', '--signal-on-hup=HUP', 'app');

# -- placement
c('--');
c('--', 'app');
c('--', '--port=80', 'app');
c('--port=80', '--', 'app', '-x');
c('--port=80', 'app', '--');
c('--port=80', '--');
c('--', '--', 'app');
c('app', '--', '--port=9');
c('--port=80', '--', 'app', '--', 'x');
c('app', 'arg', '--', '--x');
c('app', '--port=80', '--', '--pid-file=x');

# permutation
c('app', '--port=80');
c('app', '-x');
c('app', 'arg1', '--port=80', 'arg2', '--', '--pid-file=x');
c('app', '--help', 'x');
c('app', '-s', 'x');
c('--port=80', 'plackup', '-s', 'x');
c('--port=80', '--', 'plackup', '-s', 'x');
c('./app', '--port', '80', 'a1', '--interval=3', 'a2');

# worker flags after -- untouched
c('--', 'app', '--port=9', '-s', 'x');
c('--port=80', '--', 'app', '--port=9', '-s', 'x', '--', '-');

# lone -
c('-');
c('--port=80', '-', 'app');
c('app', '-');
c('--port', '-', 'app');
c('--interval', '-', 'app');
c('--port=-', 'app');

# values beginning with -
c('--port', '-5', 'app');
c('--port', '--', 'app');
c('--port=-5', 'app');
c('--port', '--help', 'app');
c('--port=--', 'app');
c('--port', '--', '--', 'app');
c('--dir', '--port=80', 'app');
c('--port', '-x', 'app');
c('--interval', '-5', 'app');
c('--interval', '--', 'app');
c('--interval', '--port=80', 'app');
c('--interval=-5', 'app');
c('--port==80', 'app');
c('--port=80=3', 'app');
c('--port=8=0', 'app');

# empty values
c('--port=', 'app');
c('--interval=', 'app');
c('--dir=', 'app');
c('--log-file=', 'app');
c('--port', '', 'app');
c('--interval', '', 'app');
c('--dir', '', 'app');

# missing values at the end
c('--port');
c('--interval');
c('app', '--port');
c('--dir');
c('--pid');
c('-port');
c('--port=80', 'app', '--interval');

# a value given to a flag
c('--enable-auto-restart=1', 'app');
c('--daemonize=0', 'app');
c('--restart=yes');
c('--help=1');
c('--version=x');
c('--stop=1');
c('--daemonize=', 'app');
c('--dae=1', 'app');
c('-daemonize=1', 'app');
c('+daemonize=1', 'app');
c('--enable-auto-restart', '1', 'app');

# numbers
for my $n ('0', '-1', '+3', '05', '00', '-0', '+0', '0x10', '0b11',
           '010', '1e3', '0.5', '1.0', ' 5', '5 ', "5\n", "\n5", '5a', 'abc',
           '1_000', '_5', '5_', '-_5', '+_5', '_', '+', '-', '+-5', '--5',
           '9223372036854775807', '9223372036854775808',
           '18446744073709551615', '99999999999999999999', '-99999999999999999999',
           '4294967296', '-9223372036854775808', '-9223372036854775809',
           '18446744073709551616', '0000000000000000000000000000001') {
    c("--interval=$n", 'app');
}
c('--interval', '+3', 'app');
c('--interval', '0.5', 'app');
c('--interval', 'abc', 'app');
c('--backlog=-1', 'app');
c('--backlog', '1e3', 'app');
c('--kill-old-delay=abc', 'app');
c('--kill-old-delay=007', 'app');
c('--auto-restart-interval=0x10', 'app');
c('--auto-restart-interval=1_0', 'app');

# negation forms
c('--no-daemonize', 'app');
c('--nodaemonize', 'app');
c('--no-restart');
c('--noport=80', 'app');
c('--no', 'app');

# unknown options and odd prefixes
c('--foo', 'app');
c('--portx=1', 'app');
c('--foo=bar', 'app');
c('--foo', 'bar', 'app');
c('--port-file=x', 'app');
c('--pidfile=x', 'app');
c('--pid_file=x', 'app');
c('--log_file', 'x', 'app');
c('--=5', 'app');
c('--=', 'app');
c('---', 'app');
c('---port=80', 'app');
c('-=', 'app');
c('-=x', 'app');
c('-pv', 'app');
c('-dv', 'app');
c('-hv');
c('-p80', 'app');
c('-i5', 'app');
c('-port80', 'app');
c("--port\n=80", 'app');
c("--help\n");
c('--port 80', 'app');
c('-- port', 'app');

# several errors in one command line
c('--foo', '--bar', 'app');
c('--foo', '--port=80', '--interval=x', 'app');
c('--s', '--p', '-x', 'app');
c('--help', '--foo');
c('--port', '--foo', '--interval=x');

# help / version / client modes
c('--help');
c('--version');
c('--help', '--version');
c('--restart', '--pid-file=x', '--status-file=y');
c('--stop', '--pid-file', 'x');
c('--restart');
c('--stop', '--restart', '--pid-file=x');

# odd values
c('--port', '80 81', 'app');
c('--dir', 'a b', 'app');
c("--dir=a\tb", 'app');
c("--dir=a\nb", 'app');
c('--port=[::1]:80', '--port=u53', '--port=127.0.0.1:80=3', 'app');
c('--log-file=| cat', 'app');
c('--signal-on-hup', 'SIGUSR1', '--signal-on-term=9', 'app');

# daemonize / program checks happen later; GetOptions itself accepts these
c('--daemonize', '--log-file=x', 'app');
c('--port=80');
c();

# ---- POSIXLY_CORRECT set ---------------------------------------------------
p('--port=80', 'app', '--pid-file=x');
p('app', '--port=80');
p('app', '-x');
p('--port=80', '--interval', '5', 'app', 'arg');
p('--pid', 'x', 'app');
p('--pid=x', 'app');
p('--int=5', 'app');
p('--h');
p('--PORT=80', 'app');
p('--Pid-File', 'x', 'app');
p('-Port', '80', 'app');
p('-Pid-File', 'x', 'app');
p('--FOO', 'app');
p('-port=80', 'app');
p('-port', '80', 'app');
p('-interval=5', 'app');
p('-pid-file', 'x', 'app');
p('-PORT', '80', 'app');
p('-daemonize', 'app');
p('-daemonize=1', 'app');
p('+port=80', 'app');
p('+port', '80', 'app');
p('+daemonize', 'app');
p('+', 'app');
p('--port=80', '--', 'app');
p('--port=80', 'app', '--', 'x');
p('--', 'app');
p('--', '--', 'app');
p('--port=80', '--');
p('-', 'app');
p('--port=80', '-', '--pid-file', 'x');
p('--s', 'app');
p('-s', 'app');
p('--help');
p('--version');
p('--foo', 'app');
p('-x', 'app');
p('--foo', 'app', '--bar');
p('--enable-auto-restart=1', 'app');
p('--daemonize=0', 'app');
p('--port', '--help', 'app');
p('--port', '--', 'app');
p('--port', '-5', 'app');
p('--port');
p('--port=', 'app');
p('--interval=+3', 'app');
p('--interval=05', 'app');
p('--interval=abc', 'app');
p('--interval', 'abc', 'app');
p('--interval', '-5', 'app');
p('--no-daemonize', 'app');
p('--port=80', 'plackup', '-s', 'x');
p('---port=80', 'app');
p('--=5', 'app');
p('-=', 'app');
p('-pv', 'app');
p('--port=80', '--port=81', 'app');
p('--restart', '--pid-file=x', '--status-file=y');
p('--stop', '--pid-file', 'x');
p('--port=80');
p();

# ---------------------------------------------------------------------------

# The reference's GetOptions call, verbatim (on a localized @ARGV).
sub run_case {
    my ($posix, $args) = @_;
    if ($posix) {
        $ENV{POSIXLY_CORRECT} = 1;
    } else {
        delete $ENV{POSIXLY_CORRECT};
    }
    Getopt::Long::ConfigDefaults();

    local @ARGV = @$args;
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, $_[0] };

    my %opts = (
        port => [],
        path => [],
    );

    my $ok = GetOptions(
        map {
            $_ => do {
                my $name = (split '=', $_, 2)[0];
                $name =~ s/-/_/g;
                $opts{$name} ||= undef;
                ref($opts{$name}) ? $opts{$name} : \$opts{$name};
            },
        } qw(port=s path=s interval=i log-file=s pid-file=s dir=s signal-on-hup=s signal-on-term=s
             backlog=i envdir=s enable-auto-restart daemonize auto-restart-interval=i kill-old-delay=i
             status-file=s restart stop help version),
    );

    delete $ENV{POSIXLY_CORRECT};
    Getopt::Long::ConfigDefaults();

    my $warn = join '', @warnings;
    if ($ok) {
        die "GetOptions succeeded with warnings for @$args: $warn" if $warn ne '';
        return ('ok', { opts => normalize_opts(\%opts), argv => [map { "$_" } @ARGV] });
    }
    die "GetOptions failed without warnings for @$args" if $warn eq '';
    return ('error', $warn);
}

# %opts (underscore keys, Perl values) -> the JSON shape described above.
sub normalize_opts {
    my ($opts) = @_;
    my %out;
    for my $k (keys %$opts) {
        my $v = $opts->{$k};
        next unless defined $v;
        (my $name = $k) =~ s/_/-/g;
        if (ref $v eq 'ARRAY') {
            next unless @$v;
            $out{$name} = [map { "$_" } @$v];
        } elsif ($IS_FLAG{$name}) {
            die "flag $name has value '$v'" unless "$v" eq '1';
            $out{$name} = 1;
        } else {
            $out{$name} = "$v";
        }
    }
    return \%out;
}

sub line_for {
    my ($posix, $args) = @_;
    my ($status, $result) = run_case($posix, $args);
    return join("\t", $posix, $JSON->encode([map { "$_" } @$args]), $status,
                $JSON->encode($result)) . "\n";
}

# ---------------------------------------------------------------------------
# --verify: run each case through the real /usr/bin/start_server.

my $HOOK = <<'EOH';
BEGIN {
    require Server::Starter;
    require JSON::PP;
    no warnings 'redefine';
    my $dump = sub {
        my ($mode, %o) = @_;
        delete $o{exec};
        for my $v (values %o) {
            next unless defined $v;
            $v = ref $v ? [map { "$_" } @$v] : "$v";
        }
        print STDOUT "HOOK\t", JSON::PP->new->canonical(1)->encode(
            { mode => $mode, opts => \%o, argv => [map { "$_" } @ARGV] }), "\n";
        exit 0;
    };
    *Server::Starter::start_server   = sub { $dump->('start', @_) };
    *Server::Starter::restart_server = sub { $dump->('restart', @_) };
    *Server::Starter::stop_server    = sub { $dump->('stop', @_) };
}
$0 = '/usr/bin/start_server';
do '/usr/bin/start_server';
if ($@) { print STDERR $@; exit 255 }
exit 0;
EOH

sub run_real {
    my ($posix, $args) = @_;
    require File::Temp;
    my $out = File::Temp->new;
    my $err = File::Temp->new;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        if ($posix) { $ENV{POSIXLY_CORRECT} = 1 } else { delete $ENV{POSIXLY_CORRECT} }
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out->filename or die;
        open STDERR, '>', $err->filename or die;
        exec $^X, '-e', $HOOK, '--', @$args;
        die "exec: $!";
    }
    waitpid $pid, 0;
    my $rc = $? >> 8;
    local $/;
    open my $fo, '<', $out->filename or die; my $o = <$fo>;
    open my $fe, '<', $err->filename or die; my $e = <$fe>;
    return ($rc, $o, $e);
}

sub verify {
    my $fails = 0;
    for my $case (@CASES) {
        my ($posix, $args) = @$case;
        my ($status, $result) = run_case($posix, $args);
        my ($rc, $out, $err) = run_real($posix, $args);
        my $desc = "posix=$posix " . $JSON->encode($args);
        my @problems;
        if ($status eq 'error') {
            push @problems, "exit $rc, want 1" unless $rc == 1;
            push @problems, "stderr " . $JSON->encode($err) . " want " . $JSON->encode($result)
                unless $err eq $result;
            push @problems, "stdout not empty" unless $out eq '';
        } else {
            my $o = $result->{opts};
            if ($o->{help}) {
                push @problems, "help: exit $rc" unless $rc == 0;
                push @problems, "help: stdout" unless $out =~ /^Usage:/;
            } elsif ($o->{version}) {
                push @problems, "version: $rc " . $JSON->encode($out)
                    unless $rc == 0 && $out eq "0.35\n";
            } elsif ($o->{restart} || $o->{stop}
                     || !( $o->{daemonize} && !defined $o->{'log-file'} )
                        && @{$result->{argv}}) {
                my ($line) = $out =~ /^HOOK\t(.*)$/m;
                if (!defined $line) {
                    push @problems, "no hook output (rc=$rc, err=$err)";
                } else {
                    my $h = JSON::PP->new->decode($line);
                    my $want_mode = $o->{restart} ? 'restart' : $o->{stop} ? 'stop' : 'start';
                    push @problems, "mode $h->{mode}" unless $h->{mode} eq $want_mode;
                    my $got = $JSON->encode({ opts => normalize_opts($h->{opts}),
                                              argv => $h->{argv} });
                    my $want = $JSON->encode($result);
                    push @problems, "got $got want $want" unless $got eq $want;
                }
            } elsif ($o->{daemonize} && !defined $o->{'log-file'}) {
                push @problems, "daemonize: $rc " . $JSON->encode($err)
                    unless $rc != 0 && $err eq "Usage: --log-file option must be specified together with --deamonize\n";
            } else {
                push @problems, "no program: $rc " . $JSON->encode($err)
                    unless $rc != 0 && $err eq "server program not specified\n";
            }
        }
        if (@problems) {
            $fails++;
            print "FAIL $desc: ", join('; ', @problems), "\n";
        }
    }
    print scalar(@CASES), " cases, $fails failures\n";
    exit($fails ? 1 : 0);
}

# ---------------------------------------------------------------------------

if (@ARGV && $ARGV[0] eq '--verify') {
    verify();
} else {
    my %seen;
    for my $case (@CASES) {
        my $key = $case->[0] . $JSON->encode($case->[1]);
        $seen{$key}++;
    }
    my @dups = grep { $seen{$_} > 1 } sort keys %seen;
    die "duplicate cases: @dups\n" if @dups;
    print line_for(@$_) for @CASES;
}
