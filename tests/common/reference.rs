//! Where the Perl reference `start_server` is, shared by the test binaries
//! (included with `#[path]`).

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

/// Where Debian's `libserver-starter-perl` installs the reference.
pub const REFERENCE: &str = "/usr/bin/start_server";

/// Where the reference is once our own Debian package, which diverts it,
/// is installed too.
pub const REFERENCE_DIVERTED: &str = "/usr/bin/start_server.perl";

/// The Debian package that installs the reference.
pub const REFERENCE_PACKAGE: &str = "libserver-starter-perl";

/// The reference, if installed: the first of its two places that holds a
/// Perl script (our own binary may sit at the first).
pub fn find_reference() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<&'static Path>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        [REFERENCE_DIVERTED, REFERENCE]
            .into_iter()
            .map(Path::new)
            .find(|path| {
                let mut head = [0u8; 128];
                let n = fs::File::open(path)
                    .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                    .unwrap_or(0);
                let first_line = head[..n].split(|&b| b == b'\n').next().unwrap_or(&[]);
                first_line.starts_with(b"#!") && first_line.windows(4).any(|w| w == b"perl")
            })
    })
}
