//! The bash, zsh and fish completions under `completions/`, made from the
//! option table; the tests at the end keep the committed files equal to
//! them.

use super::{ALL, Kind, Opt, Origin, Value};

/// The signals offered for `--signal-on-hup` and `--signal-on-term`.
const SIGNALS: &str = "TERM HUP INT QUIT USR1 USR2 WINCH CONT KILL";

const GENERATED: &str = "Generated from src/options.rs: edit that, then run\n\
                         # UPDATE_GENERATED=1 cargo test --bin start_server generated";

/// An option may be given several times and each counts.
fn repeatable(o: &Opt) -> bool {
    matches!(o.name, "port" | "path")
}

/// `--a|--b` of the options whose value is `value`.
fn bash_pattern(value: Value) -> String {
    let names: Vec<String> = ALL
        .iter()
        .filter(|o| o.value == value)
        .map(|o| format!("--{}", o.name))
        .collect();
    names.join("|")
}

pub fn bash() -> String {
    let words: Vec<String> = ALL
        .iter()
        .map(|o| match o.kind {
            Kind::Flag => format!("--{}", o.name),
            Kind::Str | Kind::Int => format!("--{}=", o.name),
        })
        .collect();
    format!(
        r#"# bash completion for start_server(1)
# {GENERATED}

_start_server() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local option= i
    COMPREPLY=()
    # After --: the program, then its arguments.
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${{COMP_WORDS[i]}} == -- ]]; then
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
        option=${{COMP_WORDS[COMP_CWORD-2]}}
    elif [[ $prev == -* ]]; then
        option=$prev
    fi
    case $option in
        {files})
            COMPREPLY=($(compgen -f -- "$cur"))
            return
            ;;
        {dirs})
            COMPREPLY=($(compgen -d -- "$cur"))
            return
            ;;
        {signals})
            COMPREPLY=($(compgen -W "{SIGNALS}" -- "$cur"))
            return
            ;;
        {text})
            return
            ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "{words}" -- "$cur"))
        if [[ ${{#COMPREPLY[@]}} == 1 && ${{COMPREPLY[0]}} == *= ]]; then
            compopt -o nospace 2>/dev/null
        fi
        return
    fi
    COMPREPLY=($(compgen -c -- "$cur" | sort -u))
}}
complete -o default -F _start_server start_server
"#,
        files = bash_pattern(Value::File),
        dirs = bash_pattern(Value::Dir),
        signals = bash_pattern(Value::Signal),
        text = bash_pattern(Value::Text),
        words = words.join(" "),
    )
}

/// Quotes text for a single-quoted shell word.
fn single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub fn zsh() -> String {
    let mut specs: Vec<String> = Vec::new();
    for o in ALL {
        let description = o
            .summary()
            .replace('\\', r"\\")
            .replace('[', r"\[")
            .replace(']', r"\]");
        let star = if repeatable(o) { "*" } else { "" };
        let message = o.placeholder.replace(':', "");
        let spec = match o.value {
            Value::None => format!("{star}--{}[{description}]", o.name),
            Value::Text => format!("{star}--{}=[{description}]:{message}: ", o.name),
            Value::File => format!("{star}--{}=[{description}]:{message}:_files", o.name),
            Value::Dir => format!("{star}--{}=[{description}]:{message}:_files -/", o.name),
            Value::Signal => format!("{star}--{}=[{description}]:{message}:({SIGNALS})", o.name),
        };
        specs.push(single_quoted(&spec));
    }
    specs.push(single_quoted("(-)1:program:_command_names -e"));
    specs.push(single_quoted("*::arguments:_normal"));
    format!(
        "#compdef start_server\n# zsh completion for start_server(1)\n# {GENERATED}\n\n\
         _arguments -S \\\n  {}\n",
        specs.join(" \\\n  ")
    )
}

pub fn fish() -> String {
    let mut out = format!("# fish completion for start_server(1)\n# {GENERATED}\n\n");
    for o in ALL {
        let value = match o.value {
            Value::None => String::new(),
            Value::Text => " -x".to_string(),
            Value::File => " -r -F".to_string(),
            Value::Dir => " -x -a '(__fish_complete_directories)'".to_string(),
            Value::Signal => format!(" -x -a '{SIGNALS}'"),
        };
        let tag = match o.origin {
            Origin::Reference => "",
            Origin::Extension => " (extension)",
        };
        out.push_str(&format!(
            "complete -c start_server -l {}{value} -d {}\n",
            o.name,
            single_quoted(&format!("{}{tag}", o.summary()))
        ));
    }
    out
}

#[test]
fn generated_completions_are_up_to_date() {
    use super::tests::check_generated;
    check_generated("completions/start_server.bash", &bash());
    check_generated("completions/_start_server", &zsh());
    check_generated("completions/start_server.fish", &fish());
}
