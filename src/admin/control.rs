//! # Control socket: the admin API for the user who runs veil, without a token.
//!
//! `veil run` always binds `<data>/veil.sock` ([`SOCKET_FILE`]), a Unix socket that serves
//! the same routes as the TCP admin API ([`super::server`]) so that `veil unseal|forget|
//! purge|compact|keys|reload|env|ca path` reach the veil that holds the store with no flag
//! and no token. Who may use it is decided twice, by the kernel both times: the file is
//! mode 0600 in a data dir of mode 0700 (nobody else can even connect), and every accepted
//! connection's peer credentials (`SO_PEERCRED`) must carry veil's own effective uid, or each
//! request is answered `403` and logged (root, who passes any mode check, is refused unless
//! veil itself runs as root). Rejected: a token on the socket too (it would add a secret to
//! manage and protect nothing the uid check does not), and an abstract-namespace socket (no
//! file mode: any local process could connect).
//!
//! This file owns the socket's path, its length limit, the stale-socket check at start and
//! its removal at exit. It never touches the store: [`super::server`] serves what it accepts.

use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// File name of the control socket inside the data dir.
pub const SOCKET_FILE: &str = "veil.sock";

/// Longest socket path the kernel takes, in bytes: `sun_path` is 108 bytes on Linux and must
/// hold a terminating NUL. A longer path fails `bind` with a bare `EINVAL`-like error, so it
/// is checked first and named.
pub const SOCKET_PATH_MAX: usize = 107;

/// The control socket of the veil whose data dir is `data`.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET_FILE)
}

/// Why the control socket could not be opened. The text is for the operator and says what to
/// do.
#[derive(Debug)]
pub struct ControlError {
    kind: ControlErrorKind,
    path: PathBuf,
    source: Option<io::Error>,
}

/// Which way opening the control socket failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlErrorKind {
    /// The path is longer than [`SOCKET_PATH_MAX`] bytes.
    PathTooLong,
    /// Another live veil answers on it.
    InUse,
    /// Any other I/O failure (bind, chmod, removing a stale socket).
    Io,
}

impl ControlError {
    /// Which way it failed.
    pub fn kind(&self) -> ControlErrorKind {
        self.kind
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match self.kind {
            ControlErrorKind::PathTooLong => write!(
                f,
                "control socket {p}: the path is {} bytes, over the {SOCKET_PATH_MAX}-byte limit of \
                 Unix socket paths; use a shorter --data directory (or run veil from a directory \
                 closer to it with a relative --data)",
                self.path.as_os_str().len()
            ),
            ControlErrorKind::InUse => write!(
                f,
                "control socket {p}: another veil is running with this data dir; stop it, or \
                 give this one another --data"
            ),
            ControlErrorKind::Io => match &self.source {
                Some(e) => write!(f, "control socket {p}: {e}"),
                None => write!(f, "control socket {p}"),
            },
        }
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Checks that `path` fits in `sun_path`; the client side uses it too, so both name the
/// limit the same way.
pub fn check_path(path: &Path) -> Result<(), ControlError> {
    if path.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(ControlError {
            kind: ControlErrorKind::PathTooLong,
            path: path.to_path_buf(),
            source: None,
        });
    }
    Ok(())
}

/// The bound control socket. Dropping it removes the file (when it is still the one bound
/// here: a socket another veil bound since is left alone).
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file bound here.
    file: (u64, u64),
    uid: u32,
}

impl ControlSocket {
    /// Binds `<data>/veil.sock` (mode 0600). The data dir must exist (mode 0700: `veil run`
    /// creates it so). A socket file left by a veil that died is removed first; one that a
    /// live veil answers on is [`ControlErrorKind::InUse`]. Needs a tokio runtime.
    pub fn bind(data: &Path) -> Result<ControlSocket, ControlError> {
        let path = socket_path(data);
        check_path(&path)?;
        let io = |source: io::Error| ControlError {
            kind: ControlErrorKind::Io,
            path: path.clone(),
            source: Some(source),
        };
        match std::fs::symlink_metadata(&path) {
            Ok(_) => match std::os::unix::net::UnixStream::connect(&path) {
                Ok(_) => {
                    return Err(ControlError {
                        kind: ControlErrorKind::InUse,
                        path,
                        source: None,
                    });
                }
                // Nobody listens (ECONNREFUSED), or it is not a socket: left by a veil that
                // died. Anything of ours at this fixed name is safe to replace.
                Err(_) => std::fs::remove_file(&path).map_err(io)?,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io)?;
        // Between bind and chmod the socket has the umask's mode; the 0700 data dir keeps
        // everyone else out meanwhile. (Changing the process umask instead would race with
        // every other thread creating files.)
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        Ok(ControlSocket {
            listener,
            file: (meta.dev(), meta.ino()),
            path,
            uid: rustix::process::geteuid().as_raw(),
        })
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection and reads its peer's credentials: [`Peer::Owner`] when the
    /// peer runs as veil's effective uid, [`Peer::Stranger`] otherwise (also when the kernel
    /// gave no credentials).
    pub(super) async fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        let (stream, _) = self.listener.accept().await?;
        let peer = match stream.peer_cred() {
            Ok(c) if c.uid() == self.uid => Peer::Owner {
                uid: c.uid(),
                pid: c.pid(),
            },
            Ok(c) => Peer::Stranger {
                uid: Some(c.uid()),
                pid: c.pid(),
                owner: self.uid,
            },
            Err(_) => Peer::Stranger {
                uid: None,
                pid: None,
                owner: self.uid,
            },
        };
        Ok((stream, peer))
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Who is on the other end of a control socket connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    /// A process of veil's own effective uid.
    Owner {
        /// Its uid.
        uid: u32,
        /// Its pid, when the kernel said.
        pid: Option<i32>,
    },
    /// Anyone else: every request is refused with 403.
    Stranger {
        /// Its uid (`None`: no credentials).
        uid: Option<u32>,
        /// Its pid, when the kernel said.
        pid: Option<i32>,
        /// veil's uid, for the refusal's text.
        owner: u32,
    },
}

/// Is a veil running with data dir `data`? `Ok(Some(path))` when its control socket accepts a
/// connection, `Ok(None)` when there is no socket or only a stale one (nobody listens), and
/// the error when it exists but cannot be reached (`EACCES`: a veil of another user; the
/// path is too long). A blocking connect to a local socket: it answers at once or not at all.
pub fn find(data: &Path) -> io::Result<Option<PathBuf>> {
    let path = socket_path(data);
    check_path(&path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => Ok(Some(path)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Connects to the control socket at `path`.
pub(super) async fn connect(path: &Path) -> io::Result<UnixStream> {
    check_path(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    UnixStream::connect(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_over_the_sun_path_limit_is_named_with_the_fix() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        let e = check_path(&socket_path(&long)).unwrap_err();
        assert_eq!(e.kind(), ControlErrorKind::PathTooLong);
        let msg = e.to_string();
        assert!(msg.contains("107-byte limit"), "{msg}");
        assert!(msg.contains("shorter --data"), "{msg}");
        assert!(check_path(&socket_path(Path::new("/tmp/x"))).is_ok());
        // Exactly at the limit is accepted, one byte more is not.
        let at = PathBuf::from(format!("/{}", "a".repeat(SOCKET_PATH_MAX - 1)));
        assert!(check_path(&at).is_ok());
        let over = PathBuf::from(format!("/{}", "a".repeat(SOCKET_PATH_MAX)));
        assert!(check_path(&over).is_err());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_refused_and_drop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        // Stale: bound, then its listener gone (a veil that died leaves exactly this).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let first = ControlSocket::bind(dir.path()).expect("stale socket replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = ControlSocket::bind(dir.path()).unwrap_err();
        assert_eq!(second.kind(), ControlErrorKind::InUse);
        assert!(second.to_string().contains("another veil"), "{second}");
        assert!(path.exists(), "the live veil's socket was removed");
        drop(first);
        assert!(!path.exists(), "socket left behind at exit");
    }

    #[tokio::test]
    async fn find_tells_a_live_socket_from_none_and_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path()).unwrap(), None);
        let sock = ControlSocket::bind(dir.path()).unwrap();
        assert_eq!(find(dir.path()).unwrap(), Some(socket_path(dir.path())));
        drop(sock);
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        assert_eq!(find(dir.path()).unwrap(), None, "stale");
    }

    #[tokio::test]
    async fn the_owner_is_recognized_by_its_uid() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ControlSocket::bind(dir.path()).unwrap();
        let client = connect(sock.path());
        let (accepted, connected) = tokio::join!(sock.accept(), client);
        let _c = connected.unwrap();
        let (_s, peer) = accepted.unwrap();
        let me = rustix::process::geteuid().as_raw();
        assert!(
            matches!(peer, Peer::Owner { uid, pid: Some(p) } if uid == me && p == std::process::id() as i32),
            "{peer:?}"
        );
    }
}
