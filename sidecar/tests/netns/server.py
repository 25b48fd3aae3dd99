"""A plain TCP/HTTP server with no SDK, for the kernel-view tests: what the sidecar must
drain without any code of lameduck in it.

usage: server.py PORT DRAIN_SECONDS CLOSED_FILE

Answers every request with 200 and `Connection: close`. A drain request — SIGQUIT,
SIGUSR2, SIGTERM or `POST /drain` — makes it keep serving for DRAIN_SECONDS (the
in-flight work of a real server), then close its listener, write the time of the close
(Unix seconds) to CLOSED_FILE and exit. Run as PID 1 of its own PID namespace, it gets only
the signals it handles, like a real server there.
"""

import signal
import socket
import sys
import threading
import time

port = int(sys.argv[1])
drain_seconds = float(sys.argv[2])
closed_file = sys.argv[3]

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(128)
drain = threading.Event()


def on_signal(number, _frame):
    print(f"signal {number}: draining", flush=True)
    drain.set()


for number in (signal.SIGQUIT, signal.SIGUSR2, signal.SIGTERM):
    signal.signal(number, on_signal)


def handle(conn):
    try:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        if data.startswith(b"POST /drain"):
            print("POST /drain: draining", flush=True)
            drain.set()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    except OSError:
        pass
    finally:
        conn.close()


def accept_loop():
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


threading.Thread(target=accept_loop, daemon=True).start()
print("ready", flush=True)
while not drain.wait(0.05):
    pass
time.sleep(drain_seconds)
# shutdown() wakes the accept() blocked in the other thread; close() alone would not.
listener.shutdown(socket.SHUT_RDWR)
listener.close()
with open(closed_file, "w") as f:
    f.write(f"{time.time():.6f}")
print("listener closed", flush=True)
time.sleep(0.1)
