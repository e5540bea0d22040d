//! The plain client: `ferry ls`, `ferry get` and `ferry put`, no mount needed.
//!
//! Transfers keep several 1 MiB requests in flight so that a download or upload
//! runs at the connection's speed rather than at one round trip per chunk. An
//! upload goes to a temporary name beside its destination and is renamed into
//! place only when complete, so the remote file appears whole or not at all.
//! Every request goes on behalf of the user running the command (its ids and
//! groups), whose permissions the server checks.

use crate::client::{ConnectError, ConnectOptions, OpResult, RemoteClient};
use crate::creds;
use ferry_common::frame::MAX_CHUNK;
use ferry_common::proto::{Cred, DirEntry, Op, Reply};
use ferry_common::{Attr, Errno, FileKind, RelPath};
use indicatif::{ProgressBar, ProgressStyle};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Chunks in flight during a transfer.
const WINDOW: usize = 8;

/// A failure worded for the person at the terminal.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<ConnectError> for CliError {
    fn from(e: ConnectError) -> Self {
        CliError(e.to_string())
    }
}

/// A connection used on behalf of this process.
struct Client {
    remote: RemoteClient,
    me: Cred,
}

impl Client {
    fn connect(addr: &str, options: &ConnectOptions) -> Result<Client, CliError> {
        Ok(Client {
            remote: RemoteClient::connect(addr, options)?,
            me: creds::own(),
        })
    }

    fn call(&self, op: Op) -> OpResult {
        self.remote.call(&self.me, op)
    }

    fn submit(&self, op: Op, done: impl FnOnce(OpResult) + Send + 'static) {
        self.remote.submit(&self.me, op, done)
    }

    fn list_dir(&self, path: &RelPath) -> Result<Vec<DirEntry>, Errno> {
        self.remote.list_dir(&self.me, path)
    }

    fn shutdown(&self) {
        self.remote.shutdown()
    }
}

fn remote_err(what: &str, path: &RelPath, e: Errno) -> CliError {
    match e {
        Errno::ENOENT => CliError(format!("no such remote {what}: {path}")),
        Errno::EACCES | Errno::EPERM => {
            CliError(format!("permission denied on the server: {path}"))
        }
        Errno::EROFS => CliError(format!("the server exports read-only; cannot write {path}")),
        Errno::ENOSPC => CliError(format!("the server's disk is full; cannot write {path}")),
        _ => CliError(format!("remote {what} {path}: {e}")),
    }
}

fn parse_remote(text: &str) -> Result<RelPath, CliError> {
    RelPath::parse(text).map_err(|_| {
        CliError(format!("{text:?} is not a valid remote path (paths are relative to the export; `..` is not allowed)"))
    })
}

/// The line a finished transfer leaves where its progress bar was:
/// `put: 500.0 MiB in 2.4 s (210 MiB/s) → docs/big.bin`. Only on a terminal,
/// as the bar: in a script, success stays silent, as with cp.
fn report_done(verb: &str, bytes: u64, started: Instant, dest: &dyn fmt::Display) {
    if io::stdout().is_terminal() {
        let took = started.elapsed();
        println!(
            "{verb}: {} in {:.1} s ({}) → {dest}",
            crate::units::size(bytes),
            took.as_secs_f64(),
            crate::units::rate(bytes, took)
        );
    }
}

/// Whether a path as typed ends with `/`: then it names a directory, as for cp.
fn names_a_directory(text: &OsStr) -> bool {
    text.as_bytes().ends_with(b"/")
}

fn progress(len: u64) -> ProgressBar {
    if !io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn expect_attr(r: Result<Reply, Errno>) -> Result<Attr, Errno> {
    match r? {
        Reply::Attr(a) => Ok(a),
        _ => Err(Errno::EPROTO),
    }
}

fn mode_string(attr: &Attr) -> String {
    let mut s = String::with_capacity(10);
    s.push(attr.kind.letter());
    let p = attr.perm;
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (p >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (p & special != 0, x) {
            (true, true) => lower,
            (true, false) => upper,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), for any value the
/// server sends: years before 1970, or past 9999, print as they are.
fn utc_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar),
    // counted in eras of 400 years from 0000-03-01; i128 keeps every step in range.
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn ls_line(client: &Client, dir: &RelPath, name: &[u8], attr: &Attr) -> String {
    let mtime = utc_time(attr.mtime.secs);
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {}",
        mode_string(attr),
        attr.nlink,
        attr.uid,
        attr.gid,
        attr.size,
        mtime,
        String::from_utf8_lossy(name)
    );
    if attr.kind == FileKind::Symlink {
        let target = dir
            .join(OsStr::from_bytes(name))
            .ok()
            .and_then(|p| client.call(Op::ReadLink { path: p }).ok());
        if let Some(Reply::Target(t)) = target {
            line.push_str(" -> ");
            line.push_str(&String::from_utf8_lossy(&t));
        }
    }
    line
}

/// `ferry ls ADDR [PATH]`: like `ls -l`, sorted by name.
pub fn ls(
    addr: &str,
    options: &ConnectOptions,
    path: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let client = Client::connect(addr, options)?;
    let path = parse_remote(path)?;
    let attr = expect_attr(client.call(Op::Stat { path: path.clone() }))
        .map_err(|e| remote_err("path", &path, e))?;
    let write_err = |e: io::Error| CliError(format!("cannot write the listing: {e}"));
    if attr.kind != FileKind::Directory {
        let (dir, _) = path
            .split_last()
            .unwrap_or((RelPath::root(), OsStr::new("")));
        let line = ls_line(&client, &dir, path.file_name().as_bytes(), &attr);
        client.shutdown();
        return writeln!(out, "{line}").map_err(write_err);
    }
    let mut entries = client
        .list_dir(&path)
        .map_err(|e| remote_err("directory", &path, e))?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for entry in &entries {
        writeln!(out, "{}", ls_line(&client, &path, &entry.name, &entry.attr))
            .map_err(write_err)?;
    }
    client.shutdown();
    Ok(())
}

fn opened(r: Result<Reply, Errno>) -> Result<(u64, Attr), Errno> {
    match r? {
        Reply::Opened { handle, attr } | Reply::Created { handle, attr, .. } => Ok((handle, attr)),
        _ => Err(Errno::EPROTO),
    }
}

/// A name beside `dest` that no one else uses, for writing before the final rename.
fn temp_name_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.ferry-part-{}", std::process::id()))
}

/// `ferry get ADDR REMOTE [LOCAL]`: downloads a file; returns where it was written.
pub fn get(
    addr: &str,
    options: &ConnectOptions,
    remote: &str,
    local: Option<&Path>,
) -> Result<PathBuf, CliError> {
    let started = Instant::now();
    let client = Client::connect(addr, options)?;
    let path = parse_remote(remote)?;
    if path.is_root() {
        return Err(CliError(
            "the export root is a directory; name a file to get".into(),
        ));
    }
    let (handle, attr) = opened(client.call(Op::Open {
        path: path.clone(),
        flags: libc::O_RDONLY,
    }))
    .map_err(|e| match e {
        Errno::EISDIR => CliError(format!(
            "{path} is a directory on the server; ferry get copies files"
        )),
        e => remote_err("file", &path, e),
    })?;
    if attr.kind != FileKind::File {
        client.submit(Op::Close { handle }, |_| {});
        return Err(CliError(format!(
            "{path} is not a regular file on the server"
        )));
    }
    let name = Path::new(path.file_name());
    let dest = match local {
        None => PathBuf::from(name),
        Some(l) if l.is_dir() => l.join(name),
        Some(l) if names_a_directory(l.as_os_str()) => {
            client.submit(Op::Close { handle }, |_| {});
            return Err(CliError(format!(
                "cannot get {path} into {}: Not a directory (a trailing / names a \
                 directory, and there is none)",
                l.display()
            )));
        }
        Some(l) => l.to_path_buf(),
    };
    // A destination that exists and is no regular file (a device such as
    // /dev/null, a FIFO) is written in place, as cp does: renaming a finished
    // file over it would replace the device.
    let special = fs::metadata(&dest).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if special {
        let outcome = OpenOptions::new()
            .write(true)
            .open(&dest)
            .map_err(|e| CliError(format!("cannot write {}: {e}", dest.display())))
            .and_then(|file| download(&client, handle, attr.size, &file, Order::InOrder));
        client.submit(Op::Close { handle }, |_| {});
        outcome?;
        client.shutdown();
        report_done("get", attr.size, started, &dest.display());
        return Ok(dest);
    }
    let temp = temp_name_beside(&dest);
    // The error names the file asked for, not the temporary one beside it.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(u32::from(attr.perm) & 0o777)
        .open(&temp)
        .map_err(|e| {
            client.submit(Op::Close { handle }, |_| {});
            CliError(format!("cannot create {}: {e}", dest.display()))
        })?;
    let outcome = download(&client, handle, attr.size, &file, Order::AtOffsets);
    client.submit(Op::Close { handle }, |_| {});
    let finished = outcome.and_then(|()| {
        file.sync_all()
            .map_err(|e| CliError(format!("cannot write {}: {e}", dest.display())))?;
        fs::rename(&temp, &dest)
            .map_err(|e| CliError(format!("cannot create {}: {e}", dest.display())))
    });
    if let Err(e) = finished {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    client.shutdown();
    report_done("get", attr.size, started, &dest.display());
    Ok(dest)
}

/// How a download writes its file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Each chunk at its offset as it arrives, several in flight (a regular file).
    AtOffsets,
    /// One chunk at a time, appended (a device or FIFO, which has no offsets).
    InOrder,
}

fn download(
    client: &Client,
    handle: u64,
    mut size: u64,
    mut file: &File,
    order: Order,
) -> Result<(), CliError> {
    let bar = progress(size);
    let window = if order == Order::InOrder { 1 } else { WINDOW };
    let (tx, rx) = mpsc::channel();
    let mut next = 0u64;
    let mut in_flight = 0usize;
    loop {
        while in_flight < window && next < size {
            let len = (size - next).min(u64::from(MAX_CHUNK)) as u32;
            let tx = tx.clone();
            let offset = next;
            client.submit(
                Op::Read {
                    handle,
                    offset,
                    len,
                },
                move |r| {
                    let _ = tx.send((offset, len, r));
                },
            );
            next += u64::from(len);
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let (offset, len, r) = rx
            .recv_timeout(Duration::from_secs(700))
            .map_err(|_| CliError("the server stopped answering".into()))?;
        in_flight -= 1;
        let data = match r {
            Ok(Reply::Data(d)) => d,
            Ok(_) => return Err(CliError("remote read: unexpected answer".into())),
            Err(e) => return Err(CliError(format!("reading the remote file failed: {e}"))),
        };
        match order {
            Order::AtOffsets => file.write_all_at(&data, offset),
            Order::InOrder => file.write_all(&data),
        }
        .map_err(|e| CliError(format!("cannot write: {e}")))?;
        bar.inc(data.len() as u64);
        if data.len() < len as usize {
            // The file ends here: it shrank on the server while we read it, or
            // was never as long as announced. Keep what exists and ask no further.
            // Reads beyond it may still be in flight; they come back empty.
            size = size.min(offset + data.len() as u64);
            next = next.min(size);
        }
    }
    if order == Order::AtOffsets {
        // Whatever arrived in whichever order, the copy ends where the file did.
        file.set_len(size)
            .map_err(|e| CliError(format!("cannot write: {e}")))?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// `ferry put ADDR LOCAL [REMOTE]`: uploads a file; returns its remote path.
/// REMOTE may name an existing remote directory to put the file into.
pub fn put(
    addr: &str,
    options: &ConnectOptions,
    local: &Path,
    remote: Option<&str>,
) -> Result<RelPath, CliError> {
    let file =
        File::open(local).map_err(|e| CliError(format!("cannot read {}: {e}", local.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| CliError(format!("cannot read {}: {e}", local.display())))?;
    if !meta.is_file() {
        return Err(CliError(format!(
            "{} is not a regular file",
            local.display()
        )));
    }
    let base = local
        .file_name()
        .ok_or_else(|| CliError(format!("{} has no file name", local.display())))?;
    let started = Instant::now();
    let client = Client::connect(addr, options)?;
    let mut dest = match remote {
        Some(r) => parse_remote(r)?,
        None => RelPath::root(),
    };
    let found = expect_attr(client.call(Op::Stat { path: dest.clone() }));
    let is_dir = matches!(&found, Ok(a) if a.kind == FileKind::Directory);
    if let Some(r) = remote.filter(|r| !is_dir && names_a_directory(OsStr::new(r))) {
        let why = match found {
            Ok(_) => format!("{dest} is not a directory on the server"),
            Err(Errno::ENOENT) => format!("there is no directory {dest} on the server"),
            Err(e) => return Err(remote_err("directory", &dest, e)),
        };
        return Err(CliError(format!(
            "cannot put {} into {r}: Not a directory ({why}; a trailing / names a directory)",
            local.display()
        )));
    }
    if is_dir {
        dest = dest.join(base).map_err(|_| {
            CliError(format!(
                "{} is not a valid remote name",
                base.to_string_lossy()
            ))
        })?;
    }
    let (parent, name) = dest
        .split_last()
        .ok_or_else(|| CliError("cannot replace the export root".into()))?;
    let temp_name = format!(
        ".{}.ferry-part-{}",
        name.to_string_lossy(),
        std::process::id()
    );
    let temp = parent
        .join(OsStr::new(&temp_name))
        .map_err(|_| CliError(format!("the name {} is too long", name.to_string_lossy())))?;
    let mode = meta.permissions().mode() & 0o7777;
    let flags = libc::O_WRONLY | libc::O_EXCL;
    let (handle, _) = opened(client.call(Op::Create {
        path: temp.clone(),
        flags,
        mode,
    }))
    .map_err(|e| match e {
        Errno::ENOENT => CliError(format!("no such remote directory: {parent}")),
        e => remote_err("file", &temp, e),
    })?;
    let outcome = upload(&client, handle, &file, meta.len()).and_then(|()| {
        match client.call(Op::Fsync {
            handle,
            datasync: false,
        }) {
            Ok(_) => Ok(()),
            Err(e) => Err(remote_err("file", &temp, e)),
        }
    });
    let _ = client.call(Op::Close { handle });
    let renamed = outcome.and_then(|()| {
        client
            .call(Op::Rename {
                from: temp.clone(),
                to: dest.clone(),
                flags: 0,
            })
            .map(|_| ())
            .map_err(|e| remote_err("file", &dest, e))
    });
    if let Err(e) = renamed {
        let _ = client.call(Op::Unlink { path: temp });
        return Err(e);
    }
    client.shutdown();
    report_done("put", meta.len(), started, &dest);
    Ok(dest)
}

fn upload(client: &Client, handle: u64, file: &File, size: u64) -> Result<(), CliError> {
    let bar = progress(size);
    let (tx, rx) = mpsc::channel();
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let mut eof = false;
    loop {
        while in_flight < WINDOW && !eof {
            let mut buf = vec![0u8; MAX_CHUNK as usize];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read_at(&mut buf[filled..], next + filled as u64) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(CliError(format!("cannot read the local file: {e}"))),
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            let tx = tx.clone();
            let offset = next;
            client.submit(
                Op::Write {
                    handle,
                    offset,
                    data: buf,
                },
                move |r| {
                    let _ = tx.send((filled, r));
                },
            );
            next += filled as u64;
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let (len, r) = rx
            .recv_timeout(Duration::from_secs(700))
            .map_err(|_| CliError("the server stopped answering".into()))?;
        in_flight -= 1;
        match r {
            Ok(Reply::Written(n)) if n as usize == len => bar.inc(len as u64),
            Ok(Reply::Written(_)) => {
                return Err(CliError("the server wrote less than it was sent".into()))
            }
            Ok(_) => return Err(CliError("remote write: unexpected answer".into())),
            Err(Errno::ENOSPC) => return Err(CliError("the server's disk is full".into())),
            Err(e) => return Err(CliError(format!("remote write failed: {e}"))),
        }
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_for_any_value() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(utc_time(-86_400 * 365), "1969-01-01T00:00:00Z");
        assert_eq!(utc_time(-2_208_988_800), "1900-01-01T00:00:00Z");
        assert_eq!(utc_time(253_402_300_800), "10000-01-01T00:00:00Z");
        // The extremes print something, and do not panic.
        assert!(utc_time(i64::MIN).ends_with('Z'));
        assert!(utc_time(i64::MAX).ends_with('Z'));
    }

    #[test]
    fn mode_strings_match_ls() {
        let mut a = Attr::blank(FileKind::Directory);
        a.perm = 0o1777;
        assert_eq!(mode_string(&a), "drwxrwxrwt");
        a.kind = FileKind::File;
        a.perm = 0o4644;
        assert_eq!(mode_string(&a), "-rwSr--r--");
        a.perm = 0o2755;
        assert_eq!(mode_string(&a), "-rwxr-sr-x");
    }
}
