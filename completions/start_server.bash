# bash completion for start_server(1)
# Generated from src/options.rs: edit that, then run
# UPDATE_GENERATED=1 cargo test --bin start_server generated

_start_server() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local option= i
    COMPREPLY=()
    # After --: the program, then its arguments.
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} == -- ]]; then
            if ((i == COMP_CWORD - 1)); then
                COMPREPLY=($(compgen -c -- "$cur" | sort -u))
            else
                COMPREPLY=($(compgen -f -- "$cur"))
            fi
            return
        fi
    done
    # bash splits --name=value into three words at the =.
    if [[ $cur == = ]]; then
        option=$prev
        cur=
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        option=${COMP_WORDS[COMP_CWORD-2]}
    elif [[ $prev == -* ]]; then
        option=$prev
    fi
    case $option in
        --path|--pid-file|--status-file|--log-file)
            COMPREPLY=($(compgen -f -- "$cur"))
            return
            ;;
        --dir|--envdir)
            COMPREPLY=($(compgen -d -- "$cur"))
            return
            ;;
        --signal-on-hup|--signal-on-term)
            COMPREPLY=($(compgen -W "TERM HUP INT QUIT USR1 USR2 WINCH CONT KILL" -- "$cur"))
            return
            ;;
        --port|--interval|--auto-restart-interval|--kill-old-delay|--backlog|--signal-timeout|--max-retry-interval|--notify-timeout|--systemd-notify)
            return
            ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--port= --path= --dir= --interval= --signal-on-hup= --signal-on-term= --pid-file= --status-file= --log-file= --daemonize --envdir= --enable-auto-restart --auto-restart-interval= --kill-old-delay= --backlog= --restart --stop --help --version --signal-timeout= --max-retry-interval= --notify-ready --notify-timeout= --systemd-notify= --systemd-listen-fds --subreaper --upgrade" -- "$cur"))
        if [[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]]; then
            compopt -o nospace 2>/dev/null
        fi
        return
    fi
    COMPREPLY=($(compgen -c -- "$cur" | sort -u))
}
complete -o default -F _start_server start_server
