//! The differential suite: every scenario runs on the Perl reference
//! (`/usr/bin/start_server`, from Debian's `libserver-starter-perl`) and on
//! our binary, side by side, and the two observation records must agree,
//! except for the differences COMPATIBILITY.md documents, which are checked
//! as differences. Without the reference, each test that needs it passes
//! after a `skipped: <test>: ...` line naming the package to install;
//! `START_SERVER_TEST_NO_SKIP=1` (set by `.ci/run`) makes it fail instead.
//!
//! - `harness`: the binaries, a sandbox per run, the guard that kills every
//!   process a run started;
//! - `scenario`: the scenario description, running one on both binaries
//!   and comparing; `run`: one run on one binary and its observations;
//!   `watch`: the status-file watcher;
//! - `record`: an observation record, its normalisation and the diff;
//! - `differences`: the documented differences and their checks;
//! - `scenarios`: the scenarios; `getopt`: the argument-parsing matrix.
//!
//! Knobs: `COMPAT_ONLY=name,name` runs only those scenarios,
//! `COMPAT_VERBOSE=1` prints both records of every scenario,
//! `COMPAT_PARALLEL=N` bounds how many scenarios run at once (default 6).

mod differences;
mod getopt;
mod harness;
mod record;
mod run;
mod scenario;
mod scenarios;
mod watch;

#[test]
fn the_reference_is_installed() {
    harness::have_reference();
}

/// COMPATIBILITY.md has a section for every documented difference, in the
/// same order as `differences::ALL`, naming every scenario that shows it;
/// every difference is shown by at least one scenario or matrix line.
#[test]
fn compatibility_md_documents_every_difference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/COMPATIBILITY.md");
    let md = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let sections: Vec<(&str, &str)> = md
        .split("\n### `")
        .skip(1)
        .filter_map(|chunk| chunk.split_once('`'))
        .collect();
    let md_ids: Vec<&str> = sections.iter().map(|(id, _)| *id).collect();
    let code_ids: Vec<&str> = differences::ALL.iter().map(|d| d.id).collect();
    assert_eq!(
        md_ids, code_ids,
        "COMPATIBILITY.md's sections and differences::ALL"
    );
    let section = |id: &str| sections.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);

    let all = scenarios::all();
    let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "scenario names must be unique");
    assert!(all.len() >= 40, "only {} scenarios", all.len());

    let mut shown: Vec<&str> = Vec::new();
    for scenario in &all {
        for id in &scenario.differences {
            let text = section(id).unwrap_or_else(|| panic!("`{id}` is not in COMPATIBILITY.md"));
            assert!(
                text.contains(&format!("`{}`", scenario.name)),
                "COMPATIBILITY.md's `{id}` section does not name scenario `{}`",
                scenario.name
            );
            shown.push(id);
        }
    }
    for case in getopt::CASES {
        if let Some((id, _, _)) = case.differs {
            let text = section(id).unwrap_or_else(|| panic!("`{id}` is not in COMPATIBILITY.md"));
            assert!(
                text.contains("matrix"),
                "the `{id}` section does not mention the matrix"
            );
            shown.push(id);
        }
    }
    for d in differences::ALL {
        assert!(
            d.everywhere || shown.contains(&d.id),
            "no scenario or matrix line shows `{}`",
            d.id
        );
    }
    assert!(
        md.contains(&format!("runs {} command", getopt::CASES.len())),
        "COMPATIBILITY.md gives the wrong number of command lines (the matrix has {})",
        getopt::CASES.len()
    );
}

#[test]
fn sockets() {
    scenario::check_all(scenarios::sockets());
}

#[test]
fn workers() {
    scenario::check_all(scenarios::workers());
}

#[test]
fn restarts() {
    scenario::check_all(scenarios::restarts());
}

#[test]
fn shutdown() {
    scenario::check_all(scenarios::shutdown());
}

#[test]
fn files() {
    scenario::check_all(scenarios::files());
}

#[test]
fn clients() {
    scenario::check_all(scenarios::clients());
}

#[test]
fn envdir() {
    scenario::check_all(scenarios::envdir());
}

#[test]
fn modes() {
    scenario::check_all(scenarios::modes());
}

#[test]
fn getopt_matrix() {
    getopt::check_matrix();
}
