#!/opt/venv/bin/python
"""The image's entrypoint: `finetune ARGS`, run as the owner of /runs, never as root.

Started as root (the default: no --user):
  - /runs belongs to a user U (a host folder mounted there, or the image's own /runs, uid 1000):
    finetune runs as U, with /runs's group, so what it writes on the host is the host user's.
  - /runs belongs to root (Docker has just created the missing host folder; the host user is root;
    rootless Docker or Podman, where the host user is root in the container): finetune runs as the
    image's user `finetune` (uid 1000). For the command, the root-owned entries of /runs are lent to
    it; when the command ends they, and everything it created, go back to root. So the results belong
    to the folder's owner in every case. A container killed with SIGKILL leaves them to uid 1000.
  - HOME is a writable home for that uid, USER and LOGNAME are set (no passwd entry is needed), and
    the hub cache volume (/cache/huggingface) is handed to that uid when another uid owns it.
Started as another user (--user UID:GID, Kubernetes' runAsUser): finetune runs as that user, with a
writable HOME; a hub cache that this user cannot write is replaced by one under HOME, with a note.

UMASK (octal, e.g. -e UMASK=002) sets the umask finetune writes with; Docker's default is 022.

The entrypoint stays as PID 1 and waits: signals sent to the container (docker stop's SIGTERM,
docker kill -s INT) are forwarded to finetune, whose first SIGTERM or Ctrl-C saves a checkpoint and
stops. A Ctrl-C typed at a terminal (docker run -it) reaches finetune directly and is not sent twice.
Only the standard library: it runs before anything else, as root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile

RUNS = "/runs"
HF_CACHE = "/cache/huggingface"  # the image's HF_HOME, a volume
IMAGE_UID = IMAGE_GID = 1000  # the user `finetune`
IMAGE_HOME = "/home/finetune"
HOMES = "/home"  # where a home is made for another uid
FINETUNE = "/opt/venv/bin/finetune"
FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2}
SI_KERNEL = 0x80  # si_code of a signal the kernel sent, e.g. the terminal's Ctrl-C to its foreground group


def note(message: str) -> None:
    print(f"finetune-entrypoint: {message}", file=sys.stderr, flush=True)


def walk(top: str):
    """top and every path below it, symlinks listed but not followed."""
    yield top
    for folder, dirs, files in os.walk(top, onerror=lambda err: None):
        for name in dirs + files:
            yield os.path.join(folder, name)


class Loan:
    """The root-owned entries of a folder, lent to uid:gid for one command and given back to root."""

    def __init__(self, top: str, uid: int, gid: int) -> None:
        self.top, self.uid, self.gid = top, uid, gid
        self.root_gid = os.lstat(top).st_gid
        self.theirs: set[str] = set()  # already owned by uid: never given to root afterwards
        self.lent: dict[str, int] = {}  # path -> its group before the loan
        for path in walk(top):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid == uid:
                self.theirs.add(path)
            elif st.st_uid == 0:
                os.lchown(path, uid, gid)
                self.lent[path] = st.st_gid

    def give_back(self) -> None:
        for path in walk(self.top):
            try:
                if os.lstat(path).st_uid == self.uid and path not in self.theirs:
                    os.lchown(path, 0, self.lent.get(path, self.root_gid))
            except OSError:
                continue


def writable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def name_of(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def as_root(args: list[str], umask: int) -> int:
    """Choose the user, lend /runs if it is root's, prepare HOME and the hub cache, run finetune."""
    try:
        st = os.stat(RUNS)
        uid, gid = st.st_uid, st.st_gid
    except OSError:
        uid, gid = IMAGE_UID, IMAGE_GID
    loan = None
    if uid == 0:
        uid, gid = IMAGE_UID, IMAGE_GID
        try:
            loan = Loan(RUNS, uid, gid)
        except OSError as err:  # a read-only or root-squashed mount: finetune says what it cannot write
            note(f"cannot lend {RUNS} (root's) to uid {uid}: {err.strerror}")
    if gid == 0:  # never root's group either
        gid = uid

    home = IMAGE_HOME if uid == IMAGE_UID else os.path.join(HOMES, f"uid{uid}")
    os.makedirs(home, mode=0o755, exist_ok=True)
    if os.stat(home).st_uid != uid:
        os.chown(home, uid, gid)
    env = dict(os.environ, HOME=home, USER=name_of(uid), LOGNAME=name_of(uid))
    if os.environ.get("HF_HOME") == HF_CACHE and os.path.isdir(HF_CACHE) and os.stat(HF_CACHE).st_uid != uid:
        for path in walk(HF_CACHE):  # the cache volume follows whoever runs: metadata only, fast
            try:
                if os.lstat(path).st_uid != uid:
                    os.lchown(path, uid, gid)
            except OSError:
                continue
    try:
        return supervise([FINETUNE, *args], env, umask, user=uid, group=gid, extra_groups=[])
    finally:
        if loan is not None:
            loan.give_back()


def as_user(args: list[str], umask: int) -> int:
    """--user UID:GID: no changes of owner, only a writable HOME and hub cache."""
    uid = os.getuid()
    env = dict(os.environ)
    if not writable(env.get("HOME", "")):  # a uid without a passwd entry gets HOME=/
        env["HOME"] = os.path.join(tempfile.gettempdir(), f"home-{uid}")
        os.makedirs(env["HOME"], mode=0o700, exist_ok=True)
    env.setdefault("USER", name_of(uid))
    env.setdefault("LOGNAME", env["USER"])
    hf_home = env.get("HF_HOME")
    if hf_home and os.path.isdir(hf_home):
        hub = os.path.join(hf_home, "hub")
        if not writable(hf_home) or (os.path.isdir(hub) and not writable(hub)):
            env["HF_HOME"] = os.path.join(env["HOME"], ".cache", "huggingface")
            note(
                f"{hf_home} is not writable by uid {uid}: the hub cache is {env['HF_HOME']} for this "
                "container (run without --user to keep the cache volume)"
            )
    return supervise([FINETUNE, *args], env, umask)


def supervise(command: list[str], env: dict, umask: int, **user) -> int:
    """Run command as a child, forward signals to it, reap every child; its exit code (128+N if killed)."""
    waited = FORWARDED | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    child = subprocess.Popen(
        command, env=env, umask=umask, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []), **user
    )
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            while True:  # PID 1 also reaps orphans (data loader workers whose parent died)
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if pid == 0:
                    break
                if pid == child.pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode is not None:
                return child.returncode if child.returncode >= 0 else 128 - child.returncode
        elif not (info.si_signo in (signal.SIGINT, signal.SIGQUIT) and info.si_code == SI_KERNEL):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(info.si_signo)


def main(args: list[str]) -> int:
    umask = 0o022
    if os.environ.get("UMASK"):
        try:
            umask = int(os.environ["UMASK"], 8) & 0o777
        except ValueError:
            note(f"UMASK={os.environ['UMASK']!r} is not an octal umask such as 022 or 002")
            return 2
    else:
        umask = os.umask(umask)  # keep the container's own (Docker: 022)
        os.umask(umask)
    return as_root(args, umask) if os.getuid() == 0 else as_user(args, umask)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
