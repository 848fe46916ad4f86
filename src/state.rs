//! The state format that carries a running supervisor across an upgrade
//! of start_server itself (`upgrade.rs`): what the old image writes into
//! a memfd before it execs the new one, and what the new image reads back.
//!
//! A header names the format and its [`VERSION`]; then fields follow in a
//! fixed order, each written by [`Encode`] and read back by [`Decode`]:
//! integers little-endian, byte strings with a `u32` length, options and
//! lists with a tag or a count. Nothing is self-describing: a reader of
//! another version refuses the whole state, which is why the old image
//! asks the new binary first (`upgrade.rs`, the probe) whether it reads
//! this version.
//!
//! Invariant: reading never panics and never allocates more than the
//! input holds: every length is checked against what is left.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

/// The version this build writes and the only one it reads. Raise it when
/// anything written changes.
pub const VERSION: u32 = 1;

const MAGIC: &[u8; 20] = b"start_server state\n\0";

/// Why a state could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn new(what: impl Into<String>) -> Error {
        Error(what.into())
    }
}

fn error(what: impl Into<String>) -> Error {
    Error::new(what)
}

/// A state being written.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
    /// The descriptors written, each with whether it was close-on-exec:
    /// what the exec must hand over.
    fds: Vec<(RawFd, bool)>,
}

impl Writer {
    /// A state with the header of this build's version.
    pub fn new() -> Writer {
        let mut w = Writer::default();
        w.bytes.extend_from_slice(MAGIC);
        VERSION.encode(&mut w);
        w
    }

    pub fn put<T: Encode + ?Sized>(&mut self, value: &T) {
        value.encode(self);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The descriptors written, each with whether it was close-on-exec.
    pub fn fds(&self) -> &[(RawFd, bool)] {
        &self.fds
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
}

/// A state being read.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    /// The descriptors taken so far: each may be owned once.
    taken: Vec<RawFd>,
}

impl<'a> Reader<'a> {
    /// Checks the header: the format, and a version this build reads.
    pub fn new(bytes: &'a [u8]) -> Result<Reader<'a>, Error> {
        let mut r = Reader {
            bytes,
            taken: Vec::new(),
        };
        if r.raw(MAGIC.len())? != MAGIC {
            return Err(error("not a start_server state"));
        }
        let version = u32::decode(&mut r)?;
        if version != VERSION {
            return Err(error(format!(
                "state version {version}, this start_server reads version {VERSION}"
            )));
        }
        Ok(r)
    }

    pub fn get<T: Decode>(&mut self) -> Result<T, Error> {
        T::decode(self)
    }

    /// Everything was read: a longer state is another format.
    pub fn finish(self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(error(format!("{} bytes left over", self.bytes.len())))
        }
    }

    fn raw(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.bytes.len() {
            return Err(error("state ends early"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// A count of items each at least one byte long: never more than what
    /// is left, so a corrupt count cannot make us allocate.
    fn count(&mut self) -> Result<usize, Error> {
        let n = u32::decode(self)? as usize;
        if n > self.bytes.len() {
            return Err(error(format!("count {n} exceeds the state")));
        }
        Ok(n)
    }
}

/// A value the state can carry.
pub trait Encode {
    fn encode(&self, w: &mut Writer);
}

/// A value read back from the state.
pub trait Decode: Sized {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error>;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                w.raw(&self.to_le_bytes());
            }
        }
        impl Decode for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
                let bytes = r.raw(std::mem::size_of::<$t>())?;
                let mut array = [0u8; std::mem::size_of::<$t>()];
                array.copy_from_slice(bytes);
                Ok(<$t>::from_le_bytes(array))
            }
        }
    )*};
}

integer!(u8, u32, u64, i32);

impl Encode for bool {
    fn encode(&self, w: &mut Writer) {
        u8::from(*self).encode(w);
    }
}

impl Decode for bool {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        match u8::decode(r)? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(error(format!("bad boolean {n}"))),
        }
    }
}

impl Encode for f64 {
    fn encode(&self, w: &mut Writer) {
        self.to_bits().encode(w);
    }
}

impl Decode for f64 {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(f64::from_bits(u64::decode(r)?))
    }
}

impl Encode for Duration {
    fn encode(&self, w: &mut Writer) {
        self.as_secs().encode(w);
        self.subsec_nanos().encode(w);
    }
}

impl Decode for Duration {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        let secs = u64::decode(r)?;
        let nanos = u32::decode(r)?;
        if nanos >= 1_000_000_000 {
            return Err(error(format!("bad nanoseconds {nanos}")));
        }
        Ok(Duration::new(secs, nanos))
    }
}

impl Encode for str {
    fn encode(&self, w: &mut Writer) {
        self.as_bytes().encode(w);
    }
}

impl Encode for String {
    fn encode(&self, w: &mut Writer) {
        self.as_str().encode(w);
    }
}

impl Decode for String {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        String::from_utf8(Vec::decode(r)?).map_err(|_| error("text is not UTF-8"))
    }
}

impl Encode for OsString {
    fn encode(&self, w: &mut Writer) {
        self.as_bytes().encode(w);
    }
}

impl Decode for OsString {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(OsString::from_vec(Vec::decode(r)?))
    }
}

impl Encode for PathBuf {
    fn encode(&self, w: &mut Writer) {
        self.as_os_str().as_bytes().encode(w);
    }
}

impl Decode for PathBuf {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(PathBuf::from(OsString::decode(r)?))
    }
}

/// `Encode` and `Decode` for a struct, field by field in the order given.
/// The encoder destructures the struct whole, so a field added to it and
/// not listed here is a compile error, never a field silently dropped.
macro_rules! record {
    ($ty:ident { $($field:ident),+ $(,)? }) => {
        impl $crate::state::Encode for $ty {
            fn encode(&self, w: &mut $crate::state::Writer) {
                let $ty { $($field),+ } = self;
                $(w.put($field);)+
            }
        }
        impl $crate::state::Decode for $ty {
            fn decode(
                r: &mut $crate::state::Reader<'_>,
            ) -> Result<Self, $crate::state::Error> {
                Ok($ty { $($field: r.get()?),+ })
            }
        }
    };
}
pub(crate) use record;

/// A descriptor handed over across the exec: its number, and whether it
/// was close-on-exec, which the reader sets again (a listening socket
/// stays inheritable, our own descriptors do not).
impl Encode for OwnedFd {
    fn encode(&self, w: &mut Writer) {
        let fd = self.as_raw_fd();
        let cloexec = cloexec(fd).unwrap_or(true);
        fd.encode(w);
        cloexec.encode(w);
        w.fds.push((fd, cloexec));
    }
}

impl Decode for OwnedFd {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        let fd = RawFd::decode(r)?;
        let cloexec = bool::decode(r)?;
        if fd < 0 || r.taken.contains(&fd) {
            return Err(error(format!("descriptor {fd} named twice or invalid")));
        }
        if self::cloexec(fd).is_none() {
            return Err(error(format!("descriptor {fd} is not open")));
        }
        r.taken.push(fd);
        set_cloexec(fd, cloexec);
        // SAFETY: the descriptor is open, and the state names it once: the
        // old image handed it to this one alone, to own from now on.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Whether descriptor `fd` is close-on-exec; `None` if it is not open.
pub fn cloexec(fd: RawFd) -> Option<bool> {
    // SAFETY: F_GETFD on a number reads no memory of ours; a closed
    // number is EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags & libc::FD_CLOEXEC != 0)
}

/// Sets or clears close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: as above; F_SETFD changes only the descriptor's own flag.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        match self {
            None => 0u8.encode(w),
            Some(value) => {
                1u8.encode(w);
                value.encode(w);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        match u8::decode(r)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(r)?)),
            n => Err(error(format!("bad option tag {n}"))),
        }
    }
}

impl<T: Encode> Encode for [T] {
    fn encode(&self, w: &mut Writer) {
        // A state is far below 4 GiB: descriptors, pids and file names.
        (self.len() as u32).encode(w);
        for item in self {
            item.encode(w);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) {
        self.as_slice().encode(w);
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        let n = r.count()?;
        (0..n).map(|_| T::decode(r)).collect()
    }
}

impl<T: Encode + ?Sized> Encode for &T {
    fn encode(&self, w: &mut Writer) {
        (**self).encode(w);
    }
}

macro_rules! tuple {
    ($($name:ident)+) => {
        impl<$($name: Encode),+> Encode for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, w: &mut Writer) {
                let ($($name,)+) = self;
                $($name.encode(w);)+
            }
        }
        impl<$($name: Decode),+> Decode for ($($name,)+) {
            fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
                Ok(($($name::decode(r)?,)+))
            }
        }
    };
}

tuple!(A B);
tuple!(A B C);
tuple!(A B C D);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: Encode + Decode + PartialEq + fmt::Debug>(value: T) {
        let mut w = Writer::new();
        w.put(&value);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes).expect("header");
        assert_eq!(r.get::<T>().expect("decode"), value);
        r.finish().expect("nothing left");
    }

    proptest! {
        #[test]
        fn values_round_trip(
            a in any::<u64>(),
            b in any::<i32>(),
            s in ".*",
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            list in proptest::collection::vec((any::<u32>(), any::<bool>()), 0..16),
            maybe in proptest::option::of(any::<u64>()),
            secs in any::<u64>(),
            nanos in 0u32..1_000_000_000,
        ) {
            round_trip((a, b));
            round_trip(s);
            round_trip(OsString::from_vec(bytes));
            round_trip(list);
            round_trip(maybe);
            round_trip(Duration::new(secs, nanos));
        }

        #[test]
        fn any_bytes_are_refused_or_read_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = Writer::new().into_bytes();
            bytes.extend_from_slice(&tail);
            let mut r = Reader::new(&bytes).expect("header");
            let _ = r.get::<Vec<(OsString, Option<Vec<u64>>)>>();
        }
    }

    #[test]
    fn another_version_or_format_is_refused() {
        let mut bytes = Writer::new().into_bytes();
        bytes[MAGIC.len()] = 2;
        assert_eq!(
            Reader::new(&bytes).map(|_| ()),
            Err(error(
                "state version 2, this start_server reads version 1".to_string()
            ))
        );
        assert!(Reader::new(b"#!/bin/sh\n").is_err());
        assert!(Reader::new(b"").is_err());
    }

    #[test]
    fn a_truncated_state_is_an_error() {
        let mut w = Writer::new();
        w.put(&vec![1u64, 2, 3]);
        let bytes = w.into_bytes();
        for cut in MAGIC.len() + 4..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]).expect("header");
            assert!(r.get::<Vec<u64>>().is_err(), "cut at {cut}");
        }
    }
}
