"""The warm-pool supervisor: the source of a tiny long-lived process that runs as PID 1 in a pre-started tool
container and gives each request on its stdin to a FRESH process of the tool's own command (the image's
entrypoint and cmd), then kills everything else in the container, wipes ``/tmp``, ``/dev/mqueue`` and SysV
IPC objects before answering — so nothing of one call is left for the next (ADR 0014). The process for the
next call is started right after an answer, once the wipe is done: it has seen nothing of any call, and its
interpreter start-up (≈14 ms for ``python3``) is off the next call's path.

It makes itself non-dumpable (no ptrace or ``/proc/1/mem`` by the tool, which runs as the same uid) and, as
PID 1 of the container's PID namespace, cannot be killed from inside. Protocol (its stdin/stdout):

    request:  {"size": n, "out": cap}\\n  + n bytes of tool input
    answer:   {"exit": int|null, "signal": int|null, "oom": bool, "overflow": bool, "out": a, "err": b,
               "clean": bool}\\n + a bytes of stdout + b bytes of stderr

``clean`` false (something could not be wiped) makes the host retire the container.
"""

from __future__ import annotations

__all__ = ["SUPERVISOR"]

SUPERVISOR = r"""
import ctypes, json, os, selectors, shutil, signal, subprocess, sys, threading
argv = json.loads(sys.argv[1])
workdir = sys.argv[2] or "/"
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(4, 0, 0, 0, 0)
inp, outp = sys.stdin.buffer, sys.stdout.buffer
ERR_CAP = 262144

def oom_kills():
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
    return None

def clean():
    try:
        os.kill(-1, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    ok = True
    for base in ("/tmp", "/dev/mqueue", "/dev/shm"):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                ok = False
    for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("msg", lambda i: libc.msgctl(i, 0, None)),
                         ("sem", lambda i: libc.semctl(i, 0, 0, 0))):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 1 and remove(int(fields[1])) != 0:
                ok = False
    return ok

def spawn():
    try:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, start_new_session=True)
    except OSError:
        return None

def call(child, data, cap):
    before = oom_kills()
    if child is None or child.poll() is not None and child.returncode < 0:
        child = spawn()  # none was started ahead, or it was killed while waiting
        if child is None:
            raise OSError("the tool's command cannot be started")
    def feed():
        try:
            child.stdin.write(data)
            child.stdin.close()
        except OSError:
            pass
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out, err, tail, overflow = bytearray(), bytearray(), bytearray(), False
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ, "out")
    sel.register(child.stderr, selectors.EVENT_READ, "err")
    while sel.get_map():
        events = sel.select(0.05)
        if not events and child.poll() is not None:
            break  # the tool ended; whatever it left running holds its pipes and is killed by clean()
        for key, _ in events:
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                sel.unregister(key.fileobj)
            elif key.data == "out":
                out += chunk
                if len(out) > cap:
                    overflow = True
                    del out[cap:]
                    child.kill()
            elif len(err) < ERR_CAP:
                err += chunk
            else:
                tail = (tail + chunk)[-4096:]
    sel.close()
    child.stdout.close()
    child.stderr.close()
    status = child.wait()
    writer.join(1)
    if tail:
        err += b"\n...\n" + tail
    after = oom_kills()
    sig = -status if status < 0 else None
    if before is not None and after is not None:
        oom = after > before
    else:
        oom = sig == signal.SIGKILL and not overflow
    return {"exit": status if status >= 0 else None, "signal": sig, "oom": oom, "overflow": overflow}, out, err

ready = spawn()  # the next call's fresh process, started ahead so its interpreter start-up is off the call
while True:
    line = inp.readline()
    if not line:
        break
    request = json.loads(line)
    data = inp.read(request["size"])
    try:
        head, out, err = call(ready, data, request["out"])
    except OSError as exc:
        head, out, err = {"exit": 127, "signal": None, "oom": False, "overflow": False}, b"", str(exc).encode()
    head.update(out=len(out), err=len(err), clean=clean())
    outp.write(json.dumps(head).encode() + b"\n" + bytes(out) + bytes(err))
    outp.flush()
    ready = spawn()
"""
