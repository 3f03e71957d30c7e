"""Keep a local server off the network: run it in a network namespace of its own that has
nothing but loopback, and forward chosen ports into it from 127.0.0.1 of the host.

Why: the local Milvus binary binds every component port on all interfaces and its
``ip`` settings only change the address it advertises. No setting of it can keep it off
the machine's routable addresses; a namespace can.

How (see ``milvus_server._supervise``, the one user):

1. :func:`bind_loopback` makes the host-side listening sockets while the process is still
   in the host's namespace (a socket stays in the namespace it was made in).
2. :func:`isolate_network` moves the process into a new network namespace (and, for a
   normal user, a user namespace that maps only its own uid and gid) and brings that
   namespace's ``lo`` up. Children started afterwards (the server) inherit it.
3. :class:`Forwarder` accepts on the host-side sockets and relays each connection to
   ``127.0.0.1:<port>`` of the new namespace, byte for byte, both ways.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading

log = logging.getLogger(__name__)

# <sched.h> and <linux/sockios.h>, <net/if.h>: not exposed by Python's os module.
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# struct ifreq: char ifr_name[16], then a 24-byte union whose first member here is the
# short ifr_flags (40 bytes on every 64-bit Linux).
IFREQ = struct.Struct("16sh22x")
RELAY_CHUNK = 256 * 1024  # a batch insert of faces is a few hundred KiB
CONNECT_TIMEOUT_S = 5.0


class IsolationUnavailable(Exception):
    """This process may not make a network namespace (no capability, or the kernel or a
    container policy forbids user namespaces)."""


def bind_loopback(port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (raises OSError when taken)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # A server restarted on its port must not wait out the old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _unshare(flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return 0 if libc.unshare(flags) == 0 else ctypes.get_errno()


def _write_proc(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def isolate_network() -> None:
    """Move this process into a new network namespace with only loopback, brought up.

    Root (with CAP_SYS_ADMIN) unshares the network namespace alone; anyone else (or a
    root without that capability) needs a user namespace too, which the kernel allows
    only to a single-threaded process: call this before starting any thread. Raises
    :class:`IsolationUnavailable` when neither is allowed; the process is then unchanged.
    """
    uid, gid = os.getuid(), os.getgid()
    tried: list[str] = []
    user_ns = False
    code = _unshare(CLONE_NEWNET) if os.geteuid() == 0 else errno.EPERM
    if code != 0:
        tried.append(f"network namespace: {os.strerror(code)}")
        code = _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        if code != 0:
            tried.append(f"user and network namespaces: {os.strerror(code)}")
            raise IsolationUnavailable("; ".join(tried))
        user_ns = True
    if user_ns:
        # Map our own ids onto themselves, so the server's files keep our owner; a
        # gid_map needs setgroups denied first (user_namespaces(7)).
        try:
            _write_proc("/proc/self/setgroups", "deny")
            _write_proc("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_proc("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as exc:
            # Files are still written with our real ids; only their display inside the
            # namespace differs (the overflow id).
            log.warning("could not map uid/gid into the user namespace: %s", exc)
    _loopback_up()


def _loopback_up() -> None:
    # A socket made now belongs to the new namespace, so its ioctls act on that ``lo``.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = IFREQ.pack(b"lo", 0)
        flags = IFREQ.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, IFREQ.pack(b"lo", flags | IFF_UP))


def only_loopback() -> bool:
    """True when this process's network namespace has no interface but ``lo``."""
    return {name for _, name in socket.if_nameindex()} == {"lo"}


class _Relay:
    """One forwarded connection: two pumps, one per direction; the last one to finish
    closes both sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self._left = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        client, upstream = self.socks
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(RELAY_CHUNK):
                dst.sendall(data)
            # End of one direction: pass the half-close on, the other may still flow.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset on either side ends both directions (and wakes the other pump).
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                for sock in self.socks:
                    sock.close()


class Forwarder:
    """Relays connections accepted on host-side listening sockets to ports of 127.0.0.1
    in this process's namespace (one accepting thread per port, two per connection)."""

    def __init__(self) -> None:
        self._listeners: list[socket.socket] = []

    def add(self, listener: socket.socket, target_port: int) -> None:
        self._listeners.append(listener)
        threading.Thread(
            target=self._accept, args=(listener, target_port), daemon=True, name="forward"
        ).start()

    @staticmethod
    def _accept(listener: socket.socket, target_port: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the supervisor is stopping
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", target_port), timeout=CONNECT_TIMEOUT_S
                )
            except OSError:
                # The server is not listening (starting or stopping): the client sees a
                # closed connection, as it would without the forwarder, and retries.
                client.close()
                continue
            upstream.settimeout(None)
            # Each relayed message must leave at once: Nagle's wait for an ACK would add
            # the peer's delayed-ACK time (40 ms) to small gRPC requests.
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Relay(client, upstream).start()

    def close(self) -> None:
        """Stop accepting (connections already relayed end with the server)."""
        for listener in self._listeners:
            # shutdown wakes a thread blocked in accept(); close alone would not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._listeners.clear()
