//! The man page, `docs/start_server.1`, made from the option and
//! environment tables plus the prose below; the test at the end keeps the
//! committed file equal to it.

use super::{ALL, ENVIRONMENT, EXAMPLE, Origin};

/// The file, relative to the repository.
const PATH: &str = "docs/start_server.1";

/// Escapes text for roff: backslashes, dashes (so that options stay
/// searchable and copyable), and a `.` or `'` that would start a request.
fn esc(text: &str) -> String {
    let out = text.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        format!("\\&{out}")
    } else {
        out
    }
}

fn bold(text: &str) -> String {
    format!("\\fB{}\\fR", esc(text))
}

fn italic(text: &str) -> String {
    format!("\\fI{}\\fR", esc(text))
}

/// An option as a term: the name in bold, the value in italics.
fn option_term(name: &str, value: &str) -> String {
    if value.is_empty() {
        bold(&format!("--{name}"))
    } else {
        format!("{}={}", bold(&format!("--{name}")), italic(value))
    }
}

/// A roff document being written.
struct Page(String);

impl Page {
    fn line(&mut self, roff: &str) {
        self.0.push_str(roff);
        self.0.push('\n');
    }

    /// Text, wrapped at 78 columns for the sake of diffs and linters.
    fn text(&mut self, text: &str) {
        let mut line = String::new();
        let mut width = 0;
        for word in text.split_whitespace() {
            let escaped = esc(word).len();
            if !line.is_empty() && width + 1 + escaped > 78 {
                self.line(&esc(&line));
                line.clear();
            }
            width = if line.is_empty() {
                escaped
            } else {
                width + 1 + escaped
            };
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        self.line(&esc(&line));
    }

    /// A new paragraph, unless a heading just started one.
    fn paragraph(&mut self) {
        let last = self.0.lines().last().unwrap_or("");
        if !(last.starts_with(".SH") || last.starts_with(".SS")) {
            self.line(".PP");
        }
    }

    fn section(&mut self, title: &str) {
        self.line(&format!(".SH {title}"));
    }

    fn subsection(&mut self, title: &str) {
        self.line(&format!(".SS {title}"));
    }

    fn para(&mut self, text: &str) {
        self.paragraph();
        self.text(text);
    }

    /// A tagged paragraph; `term` is roff already.
    fn item(&mut self, term: &str, text: &str) {
        self.line(".TP");
        self.line(term);
        self.text(text);
    }

    /// Lines shown as they are, indented.
    fn literal(&mut self, lines: &[&str]) {
        self.paragraph();
        self.line(".RS 4");
        self.line(".nf");
        for l in lines {
            self.line(&esc(l));
        }
        self.line(".fi");
        self.line(".RE");
    }
}

const DESCRIPTION: &[&str] = &[
    "start_server binds the listening sockets once, then starts the server program (the \
     worker) with them and tells it their file descriptors in SERVER_STARTER_PORT. On \
     SIGHUP it starts a new generation of the worker and, once that one has stayed up \
     for --interval seconds, signals the old one (--signal-on-hup, TERM by default). The \
     sockets never close, so no connection is refused during a deploy. If the new \
     generation fails to start, the old one keeps serving and the start is retried.",
    "It is a drop-in replacement for the start_server of Perl's Server::Starter 0.35: \
     the same options parsed by the same rules, the same SERVER_STARTER_PORT protocol, \
     log lines, status file and pid file. It runs on Linux only.",
    "Options may be written --name=value or --name value, with one dash or two, in any \
     case, abbreviated to any unique prefix (--pid for --pid-file), and anywhere before \
     --; the words that are not options are the worker's command line. The extensions \
     are matched by their full name only. Seconds may be fractional (--interval=0.5). \
     Signals are names, with or without SIG, in any case, or numbers.",
    "start_server logs what it does (starting new worker PID, received HUP, spawning a \
     new worker, old worker PID died, status:STATUS, ...) on stderr, or into \
     --log-file, and writes nothing on stdout.",
];

/// `(signal, meaning)`.
const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGHUP",
        "restart: start a new generation and, once it has started, send --signal-on-hup \
         to the old workers. HUPs that arrive during a restart cause one more restart \
         after it.",
    ),
    (
        "SIGTERM",
        "shut down: send --signal-on-term to every worker, wait until they have all \
         exited, remove the pid file, status file and --path sockets, and exit 0.",
    ),
    (
        "SIGINT",
        "shut down as on SIGTERM, sending TERM to the workers.",
    ),
    (
        "SIGUSR1",
        "open --log-file again by name (after logrotate renamed it) and log into the new \
         file; workers started afterwards write to it too. Never passed on to workers.",
    ),
    (
        "SIGUSR2",
        "upgrade start_server itself: run the binary now at the path it was started as, \
         in place, keeping the pid, the sockets, the workers and every timer, if that \
         binary answers that it can take over; otherwise carry on as before. Never \
         passed on to workers (the Perl version dies of it). See --upgrade.",
    ),
    ("SIGALRM", "ignored, as by the Perl version."),
    (
        "SIGPIPE",
        "ignored by start_server; workers start with SIGPIPE ignored, as under the Perl \
         version, and every other signal at its default.",
    ),
];

/// `(file, meaning)`.
const FILES: &[(&str, &str)] = &[
    (
        "--pid-file=FILE",
        "our pid, locked with flock(2) for our whole life, removed at exit.",
    ),
    (
        "--status-file=FILE",
        "one GENERATION:PID line per live worker, sorted by generation, replaced \
         atomically, removed at exit.",
    ),
    (
        "--log-file=FILE",
        "appended to by start_server and its workers; reopened on SIGUSR1.",
    ),
    (
        "--path=PATH",
        "a unix socket, created at start and removed at exit.",
    ),
    (
        "$RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, $TMPDIR or /tmp",
        "with --notify-ready, the first of these holds a private directory \
         start_server.PID.XXXXXX with one notify socket per generation, removed at exit.",
    ),
    (
        "@start_server/PID",
        "not a file: the abstract unix socket through which --restart follows the \
         attempts of a restart. Nothing is left behind when start_server dies.",
    ),
];

/// `(status, meaning)`.
const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "start_server shut down after SIGTERM or SIGINT; --restart saw the new generation \
         current and the old one gone; --stop saw start_server gone; --upgrade saw the \
         new binary take over; --daemonize saw the daemon write its pid file; --help and \
         --version.",
    ),
    (
        "1",
        "a usage error (one line naming the bad option or value; nothing is started or \
         created), a setup error (a socket that cannot be bound, a pid file locked by \
         another start_server, ...), a --restart or --stop that failed or was still \
         waiting after 300 seconds, or an --upgrade that did not happen.",
    ),
];

const EXAMPLES: &[(&str, &[&str])] = &[
    ("Serve ./app on port 8080:", &[EXAMPLE]),
    (
        "Deploy a new version without dropping a connection, then stop:",
        &[
            "start_server --restart --pid-file=app.pid --status-file=app.status",
            "start_server --stop --pid-file=app.pid",
        ],
    ),
    (
        "In the background, on two addresses, logging to a file that logrotate may rotate \
         (kill -USR1 after the rename):",
        &[
            "start_server --daemonize --log-file=/var/log/app.log \\",
            "    --port=127.0.0.1:8080 --port=[::1]:8080 \\",
            "    --pid-file=/run/app.pid --status-file=/run/app.status \\",
            "    -- plackup -s Starlet app.psgi",
        ],
    ),
];

/// The whole page.
pub fn render() -> String {
    let mut page = Page(String::new());
    page.line(
        ".\\\" Generated from src/options.rs: edit that, then run \
         UPDATE_GENERATED=1 cargo test --bin start_server generated",
    );
    page.line(&format!(
        ".TH START_SERVER 1 2026-12-06 \"start_server {}\" \"User Commands\"",
        env!("CARGO_PKG_VERSION")
    ));
    // No hyphenation, ragged right: option names stay whole.
    page.line(".nh");
    page.line(".ad l");
    page.section("NAME");
    page.line("start_server \\- hot\\-deploy a server program with zero downtime");
    page.section("SYNOPSIS");
    page.line(&format!(
        "{} [{}] {} {} [{}...]",
        bold("start_server"),
        italic("options"),
        bold("--"),
        italic("program"),
        italic("args")
    ));
    page.line(".br");
    page.line(&format!(
        "{} {} {}",
        bold("start_server"),
        bold("--restart"),
        [
            option_term("pid-file", "FILE"),
            option_term("status-file", "FILE")
        ]
        .join(" ")
    ));
    page.line(".br");
    for mode in ["--stop", "--upgrade"] {
        page.line(&format!(
            "{} {} {}",
            bold("start_server"),
            bold(mode),
            option_term("pid-file", "FILE")
        ));
        page.line(".br");
    }
    page.line(&format!(
        "{} {} | {}",
        bold("start_server"),
        bold("--help"),
        bold("--version")
    ));

    page.section("DESCRIPTION");
    for p in DESCRIPTION {
        page.para(p);
    }

    page.section("OPTIONS");
    let mut origin = Origin::Reference;
    for o in ALL {
        if o.origin != origin {
            origin = o.origin;
            page.subsection("Extensions");
            page.para(
                "Not in the Perl version. Each is off by default, so a setup that works \
                 with Server::Starter 0.35 behaves as before; each is matched by its full \
                 name only, so no abbreviation changes meaning.",
            );
        }
        let text = if o.details.is_empty() {
            format!("{}.", o.help)
        } else {
            format!("{}. {}", o.help, o.details)
        };
        page.item(&option_term(o.name, o.placeholder), &text);
        if let Some((value, help)) = o.also {
            page.item(&option_term(o.name, value), &format!("{help}."));
        }
    }

    page.section("ENVIRONMENT");
    page.para(
        "The worker's environment is start_server's, plus the envdir's variables, plus \
         the variables below that start_server sets.",
    );
    for (name, help) in ENVIRONMENT {
        page.item(&bold(name), &format!("{help}."));
    }

    for (title, rows) in [
        ("SIGNALS", SIGNALS),
        ("FILES", FILES),
        ("EXIT STATUS", EXIT_STATUS),
    ] {
        page.section(title);
        for (term, text) in rows {
            page.item(&bold(term), text);
        }
    }

    page.section("EXAMPLES");
    for (text, lines) in EXAMPLES {
        page.para(text);
        page.literal(lines);
    }

    page.section("SEE ALSO");
    page.text(
        "start_server(1p) and Server::Starter(3pm), the Perl version; sd_notify(3); \
         the README.md and COMPATIBILITY.md that come with start_server.",
    );
    page.0
}

#[test]
fn generated_man_page_is_up_to_date() {
    super::tests::check_generated(PATH, &render());
}

#[test]
fn roff_escapes() {
    assert_eq!(esc(".x -y \\"), "\\&.x \\-y \\e");
    assert_eq!(
        option_term("pid-file", "FILE"),
        "\\fB\\-\\-pid\\-file\\fR=\\fIFILE\\fR"
    );
}
