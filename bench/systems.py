"""The three systems under test, and the processes behind them.

Every process the benchmark starts goes through `Processes.start`, so cleanup can
stop exactly those (by pid, never by name). Every mount it makes is recorded, so
cleanup can unmount it, and a hung one can be aborted through fusectl.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time


class SetupError(Exception):
    """A system could not be set up; the message says what failed."""


def mounts():
    """Mount points from /proc/self/mountinfo, mapped to (fstype, "major:minor").

    Reading mountinfo never touches the mounted filesystem, so this cannot hang on
    a dead FUSE server (unlike stat or `mountpoint`).
    """
    found = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            found[point] = (right.split()[0], fields[2])
    return found


def is_mounted(path):
    # abspath, not realpath: realpath would stat the mount point and hang on a dead server.
    # The benchmark's paths are real already (its temp dir is resolved before anything is mounted).
    return os.path.abspath(path) in mounts()


def free_port(preferred=None):
    """`preferred` if nothing listens there on 127.0.0.1, else a port the kernel picks."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with status {proc.returncode} before listening on 127.0.0.1:{port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def cpu_seconds(pid):
    """user+system CPU seconds of one live process (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid):
    """pid and all its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def session_cpu_seconds(sid):
    """CPU seconds of the live processes in session `sid` (sshfs forks its ssh away from itself)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 (1-based) is the session id
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def tree_cpu_seconds(pid, skip_root=False):
    pids = descendants(pid)
    if skip_root:
        pids = pids[1:]
    return sum(cpu_seconds(p) or 0.0 for p in pids)


class Processes:
    """The processes this run started, stopped in reverse order at the end."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, name, argv, **kw):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
        log.close()
        proc.bench_name = name
        self.started.append(proc)
        return proc

    def log_size(self, name):
        try:
            return os.path.getsize(os.path.join(self.log_dir, f"{name}.log"))
        except OSError:
            return 0

    def log_since(self, name, offset):
        """What process `name` logged after `offset` bytes (its logs are appended to, start after start)."""
        try:
            with open(os.path.join(self.log_dir, f"{name}.log"), "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, name, lines=5):
        try:
            with open(os.path.join(self.log_dir, f"{name}.log"), encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, proc, timeout=10):
        """SIGTERM, then SIGKILL, one process we started (and its process group)."""
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self):
        for proc in reversed(self.started):
            self.stop(proc)


class MountTable:
    """The mounts this run made; unmounts them, aborting a hung FUSE connection if need be."""

    def __init__(self):
        self.made = {}  # mountpoint -> "major:minor"
        self.fusectl_mounted_by_us = False

    def record(self, point):
        info = mounts().get(os.path.abspath(point))
        if info:
            self.made[os.path.abspath(point)] = info[1]

    def abort(self, point):
        """Abort the FUSE connection of one of our mounts (frees processes stuck on it)."""
        dev = self.made.get(os.path.abspath(point))
        if not dev:
            return
        conns = "/sys/fs/fuse/connections"
        if os.path.isdir(conns) and not os.listdir(conns):
            if subprocess.run(["mount", "-t", "fusectl", "none", conns], capture_output=True).returncode == 0:
                self.fusectl_mounted_by_us = True
        minor = dev.split(":")[1]
        try:
            with open(f"{conns}/{minor}/abort", "w") as f:
                f.write("1")
        except OSError:
            pass

    def unmount(self, point, timeout=30):
        """True when `point` is no longer mounted."""
        point = os.path.abspath(point)
        if not is_mounted(point):
            self.made.pop(point, None)
            return True
        for argv in (["fusermount3", "-u", point], ["umount", point], ["umount", "-l", point]):
            try:
                subprocess.run(argv, capture_output=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                self.abort(point)
            if not is_mounted(point):
                break
        if is_mounted(point):
            self.abort(point)
            subprocess.run(["umount", "-l", point], capture_output=True)
        gone = not is_mounted(point)
        if gone:
            self.made.pop(point, None)
        return gone

    def unmount_all(self):
        left = [p for p in list(self.made) if not self.unmount(p)]
        if self.fusectl_mounted_by_us:
            subprocess.run(["umount", "/sys/fs/fuse/connections"], capture_output=True)
        return left


class Local:
    """A plain directory on the same disk: the ceiling."""

    name = "local"

    def __init__(self, base):
        self.export = os.path.join(base, "local")
        os.mkdir(self.export)
        self.root = self.export

    def remount(self):
        pass

    def end(self):
        pass

    def cpu(self):
        return {}

    def describe(self):
        return f"local directory {self.export}"


class FuseSystem:
    """Shared mount handling of ferry and sshfs: a fresh mount per measurement."""

    def __init__(self, base, procs, table):
        self.export = os.path.join(base, f"{self.name}-export")
        self.root = os.path.join(base, f"{self.name}-mnt")
        os.mkdir(self.export)
        os.mkdir(self.root)
        self.procs, self.table = procs, table
        self.client = None
        self.via = None  # a DelayProxy the client connects through, or None for the server itself

    def mount_argv(self):
        raise NotImplementedError

    def mount_env(self):
        return None

    def remount(self):
        """Unmount if mounted and mount again: empty client caches, a new session."""
        self.end()
        self.client = self.procs.start(f"{self.name}-mount", self.mount_argv(), env=self.mount_env())
        deadline = time.monotonic() + 30
        while not is_mounted(self.root):
            if self.client.poll() is not None:
                raise SetupError(f"{self.name} mount exited with status {self.client.returncode}: "
                                 f"{self.procs.log_tail(self.name + '-mount')}")
            if time.monotonic() > deadline:
                raise SetupError(f"{self.name} did not mount {self.root} within 30 s")
            time.sleep(0.02)
        self.table.record(self.root)

    def end(self):
        """Unmount; a mount whose client died or that vanished before now fails the measurement."""
        if self.client is None:
            return
        # A client that exits unmounts its mount (or leaves it dead): what ran since then did not
        # measure this system, and may have run on the empty mount point underneath.
        died = self.client.poll()
        vanished = not is_mounted(self.root)
        if not self.table.unmount(self.root):
            raise SetupError(f"cannot unmount {self.root}; run: umount -l {self.root}")
        try:
            self.client.wait(15)
        except subprocess.TimeoutExpired:
            self.procs.stop(self.client)
        self.client = None
        if died is not None or vanished:
            what = f"exited with status {died}" if died is not None else "was no longer mounted"
            raise SetupError(f"{self.name} mount {what} before the measurement ended: "
                             f"{self.procs.log_tail(self.name + '-mount', 3)}")

    def abort(self):
        self.table.abort(self.root)


STATS_LINES = {"ferry: requests sent to the server:": "sent", "ferry: requests waited for:": "waited"}


def parse_ferry_stats(text):
    """The request counts `FERRY_STATS=1 ferry mount` prints at unmount, summed over every mount in `text`.

    {"sent": {op: n}, "waited": {op: n}} — a kind is None when no line of it was printed
    (a client that does not count waits prints only the first line).
    """
    found = {"sent": None, "waited": None}
    for line in text.splitlines():
        line = line.strip()
        for prefix, kind in STATS_LINES.items():
            if not line.startswith(prefix):
                continue
            counts = found[kind] if found[kind] is not None else {}
            for item in line[len(prefix):].split(","):
                op, _, n = item.strip().rpartition(" ")
                if op and n.isdigit():
                    counts[op] = counts.get(op, 0) + int(n)
            found[kind] = counts
    return found


class Ferry(FuseSystem):
    """ferry as a user runs it: TLS and authentication on (the server makes its identity and the
    export's token in a state directory of the run; the mount records the server on first contact and
    reads the token from its file). With insecure=True, both ends run --insecure instead (plaintext, no
    authentication): the reference that shows what TLS costs."""

    name = "ferry"

    def __init__(self, base, procs, table, binary, port, insecure=False):
        self.insecure = insecure
        if insecure:
            self.name = "ferry-insecure"
        super().__init__(base, procs, table)
        self.binary, self.port = binary, port
        self.log_mark = None
        self.stats = []  # parse_ferry_stats of every mount ended since the list was emptied
        self.state = os.path.join(base, f"{self.name}-state")
        self.start_server()

    def remount(self):
        if self.server.poll() is not None:
            # Restart it, so the next workload can run; this one fails with the reason.
            status, log = self.server.returncode, self.procs.log_tail(f"{self.name}-serve")
            try:
                self.end()
            except SetupError:
                pass  # its client is likely gone with the server; the reason is the server's
            self.start_server()
            raise SetupError(f"ferry serve had exited with status {status}: {log}")
        self.end()
        self.log_mark = self.procs.log_size(f"{self.name}-mount")
        super().remount()

    def end(self):
        was_mounted = self.client is not None
        super().end()
        if was_mounted and self.log_mark is not None:
            # The client has exited (or was stopped): its counts are in the log, if it printed them.
            self.stats.append(parse_ferry_stats(self.procs.log_since(f"{self.name}-mount", self.log_mark)))
            self.log_mark = None

    def mount_env(self):
        # The client prints the requests it sent (and, if it counts them, those an application waited for).
        return dict(os.environ, FERRY_STATS="1")

    def start_server(self):
        # Root on the mount is root on the server, as sshfs logs in as root: the
        # workloads run as root and set owners (tar xf), as NFS test setups use
        # no_root_squash. ferry's default squashes a client's root.
        self.server = self.procs.start(f"{self.name}-serve", [self.binary, "serve", self.export, "--listen",
                                                               f"127.0.0.1:{self.port}",
                                                               "--no-root-squash"] + self.security())
        wait_port(self.port, self.server, "ferry serve")

    def security(self):
        # A state directory of the run's own in both cases: an --insecure server
        # still keeps its record of lock holders there.
        return (["--insecure"] if self.insecure else []) + ["--state-dir", self.state]

    def credentials(self):
        if self.insecure:
            return []
        tokens = os.path.join(self.state, "tokens")
        found = sorted(os.listdir(tokens)) if os.path.isdir(tokens) else []
        if not found:
            raise SetupError(f"ferry serve made no access token in {tokens}")
        return ["--token-file", os.path.join(tokens, found[0])]

    def mount_argv(self):
        # Foreground (no --daemon): the benchmark knows the client's pid for CPU accounting.
        port = self.via.port if self.via else self.port
        return [self.binary, "mount", f"127.0.0.1:{port}", self.root] + self.security() + self.credentials()

    def cpu(self):
        return {"server": cpu_seconds(self.server.pid),
                "client": cpu_seconds(self.client.pid) if self.client else None}

    def describe(self):
        if self.insecure:
            return (f"ferry serve --insecure --no-root-squash (127.0.0.1:{self.port}) + ferry mount --insecure: "
                    "no TLS, no authentication")
        return (f"ferry serve --no-root-squash (127.0.0.1:{self.port}) + ferry mount, otherwise default options: "
                "TLS 1.3, the export's access token")


class Sshd:
    """A private sshd on loopback with keys generated for this run."""

    def __init__(self, base, procs, port):
        self.dir = os.path.join(base, "ssh")
        os.mkdir(self.dir, 0o700)
        self.port = port
        self.created_privsep = False
        self.host_key = os.path.join(self.dir, "host_ed25519")
        self.client_key = os.path.join(self.dir, "client_ed25519")
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ferry-bench", "-f", key],
                           check=True, capture_output=True)
        with open(self.client_key + ".pub", encoding="ascii") as f:
            pub = f.read()
        authorized = os.path.join(self.dir, "authorized_keys")
        with open(authorized, "w", encoding="ascii") as f:
            f.write(pub)
        # The client's config and known hosts: empty files of our own rather than /dev/null, which
        # another program on a shared machine can replace with a regular file full of text.
        self.client_config = os.path.join(self.dir, "ssh_config")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        for path in (self.client_config, self.known_hosts):
            open(path, "w", encoding="ascii").close()
        sftp = "/usr/lib/openssh/sftp-server"
        if not os.path.exists(sftp):
            sftp = "internal-sftp"
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w", encoding="ascii") as f:
            f.write(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {os.path.join(self.dir, 'sshd.pid')}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp {sftp}
LogLevel ERROR
""")
        # sshd refuses to start without its privilege-separation directory.
        if not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", 0o755)
            self.created_privsep = True
        try:
            check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", config], capture_output=True, text=True)
            if check.returncode != 0:
                raise SetupError(f"sshd rejects its config {config}: {check.stderr.strip()}")
            self.proc = procs.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", config])
            wait_port(port, self.proc, "sshd")
        except BaseException:
            self.remove_privsep()
            raise

    def stop(self, procs):
        """Stop the listener once its sessions have ended, so none is left to init as a zombie."""
        deadline = time.monotonic() + 10
        while len(descendants(self.proc.pid)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        procs.stop(self.proc)
        self.remove_privsep()

    def remove_privsep(self):
        if self.created_privsep:
            try:
                os.rmdir("/run/sshd")
            except OSError:
                pass
            self.created_privsep = False


SSHFS_OPTIONS = "StrictHostKeyChecking=no,BatchMode=yes"


class Sshfs(FuseSystem):
    name = "sshfs"

    def __init__(self, base, procs, table, sshd):
        super().__init__(base, procs, table)
        self.sshd = sshd

    def options(self):
        port = self.via.port if self.via else self.sshd.port
        return (f"IdentityFile={self.sshd.client_key},port={port},{SSHFS_OPTIONS},"
                f"UserKnownHostsFile={self.sshd.known_hosts}")

    def mount_argv(self):
        # -f: stay in the foreground, so the pid is ours; -F: an empty ssh config (not the user's).
        return ["sshfs", f"root@127.0.0.1:{self.export}", self.root, "-f", "-F", self.sshd.client_config,
                "-o", self.options()]

    def cpu(self):
        # client: sshfs and its ssh; server: the sshd session processes and sftp-server.
        return {"client": session_cpu_seconds(self.client.pid) if self.client else None,
                "server": tree_cpu_seconds(self.sshd.proc.pid, skip_root=True)}

    def describe(self):
        return (f"sshfs root@127.0.0.1:{self.export} -F {self.sshd.client_config} -o {self.options()} "
                "(otherwise sshfs defaults; sshd with sftp-server on 127.0.0.1)")


class DelayProxy:
    """ferry-delay-proxy on loopback in front of `to_port`: half the round-trip time in each direction."""

    def __init__(self, procs, binary, name, to_port, rtt_ms):
        self.port, self.rtt_ms, self.name = free_port(), rtt_ms, name
        self.proc = procs.start(name, [binary, "--listen", f"127.0.0.1:{self.port}", "--to",
                                       f"127.0.0.1:{to_port}", "--delay-ms", f"{rtt_ms / 2:g}"])
        wait_port(self.port, self.proc, name)

    def check(self, procs):
        if self.proc.poll() is not None:
            raise SetupError(f"{self.name} exited with status {self.proc.returncode}: {procs.log_tail(self.name)}")

    def stop(self, procs):
        procs.stop(self.proc)


def clean_up(systems, sshd, procs, table, tmp, keep=False):
    """Unmounts and stops everything a run started, keeps its logs in bench/out/, and removes its temp dir `tmp`
    unless asked to `keep` it or something is still mounted there; returns what could not be cleaned."""
    # A second Ctrl-C must not cut the cleanup short (every step in it has a timeout).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for s in systems:
        try:
            s.end()
        except SetupError as e:
            print(f"bench: {e}", file=sys.stderr)
    left = table.unmount_all()
    if sshd:
        sshd.stop(procs)
    procs.stop_all()
    for p in left:
        print(f"bench: could not unmount {p}; run: umount -l {p}", file=sys.stderr)
    logs = os.path.join(tmp, "logs")
    if os.path.isdir(logs):
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copytree(logs, os.path.join(here, "out", "logs-" + os.path.basename(tmp)), dirs_exist_ok=True)
    mounted_inside = [s.root for s in systems if is_mounted(s.root)]
    if keep or mounted_inside:
        print(f"bench: kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return left + mounted_inside
