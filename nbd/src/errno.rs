//! NBD error values carried in the error field of a reply.

use std::fmt;

/// An error value the NBD protocol allows in a reply (`NBD_E*`).
///
/// The spec restricts replies to this set; anything else a backend reports
/// must be mapped onto it (see [`Errno::from_io_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Errno {
    /// `NBD_EPERM` (1): write/trim on a read-only export.
    Perm = 1,
    /// `NBD_EIO` (5): input/output error.
    Io = 5,
    /// `NBD_ENOMEM` (12): the spec says servers should avoid it.
    NoMem = 12,
    /// `NBD_EINVAL` (22): bad request (unknown command, flag, range, alignment).
    Inval = 22,
    /// `NBD_ENOSPC` (28): write beyond the end of the export, out of space.
    NoSpc = 28,
    /// `NBD_EOVERFLOW` (75): value too large.
    Overflow = 75,
    /// `NBD_ENOTSUP` (95): operation not supported.
    NotSup = 95,
    /// `NBD_ESHUTDOWN` (108): the server is shutting down.
    Shutdown = 108,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Decode a wire value; unknown values map to `None`.
    pub fn from_code(code: u32) -> Option<Errno> {
        Some(match code {
            1 => Errno::Perm,
            5 => Errno::Io,
            12 => Errno::NoMem,
            22 => Errno::Inval,
            28 => Errno::NoSpc,
            75 => Errno::Overflow,
            95 => Errno::NotSup,
            108 => Errno::Shutdown,
            _ => return None,
        })
    }

    /// Map a Linux errno value to the nearest NBD error, as the spec asks
    /// (`EDQUOT`/`EFBIG` become `ENOSPC`, `EROFS` becomes `EPERM`, anything
    /// unknown becomes `EIO`).
    pub fn from_os_errno(e: i32) -> Errno {
        match e {
            1 | 13 | 30 => Errno::Perm,    // EPERM, EACCES, EROFS
            12 => Errno::NoMem,            // ENOMEM
            22 | 34 => Errno::Inval,       // EINVAL, ERANGE
            27 | 28 | 122 => Errno::NoSpc, // EFBIG, ENOSPC, EDQUOT
            75 => Errno::Overflow,         // EOVERFLOW
            95 => Errno::NotSup,           // EOPNOTSUPP
            108 => Errno::Shutdown,        // ESHUTDOWN
            _ => Errno::Io,
        }
    }

    /// Map an I/O error through its OS error code (or `EIO`).
    pub fn from_io_error(e: &std::io::Error) -> Errno {
        match e.raw_os_error() {
            Some(code) => Errno::from_os_errno(code),
            None => match e.kind() {
                std::io::ErrorKind::PermissionDenied => Errno::Perm,
                std::io::ErrorKind::InvalidInput => Errno::Inval,
                std::io::ErrorKind::OutOfMemory => Errno::NoMem,
                _ => Errno::Io,
            },
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
        };
        f.write_str(s)
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            Errno::Perm,
            Errno::Io,
            Errno::NoMem,
            Errno::Inval,
            Errno::NoSpc,
            Errno::Overflow,
            Errno::NotSup,
            Errno::Shutdown,
        ] {
            assert_eq!(Errno::from_code(e.code()), Some(e));
        }
        assert_eq!(Errno::from_code(0), None);
        assert_eq!(Errno::from_code(4), None);
    }

    #[test]
    fn os_mapping() {
        assert_eq!(Errno::from_os_errno(122), Errno::NoSpc); // EDQUOT
        assert_eq!(Errno::from_os_errno(27), Errno::NoSpc); // EFBIG
        assert_eq!(Errno::from_os_errno(30), Errno::Perm); // EROFS
        assert_eq!(Errno::from_os_errno(5), Errno::Io);
        assert_eq!(Errno::from_os_errno(9999), Errno::Io);
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(Errno::from_io_error(&e), Errno::NoSpc);
    }
}
