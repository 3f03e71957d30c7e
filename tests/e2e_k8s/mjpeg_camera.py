"""A stand-in IP camera for the cluster test: serves a video file as an endless MJPEG
stream over HTTP (multipart/x-mixed-replace, the format of most IP cameras' /video.mjpg),
at the file's own frame rate, starting over at its end.

    python3 mjpeg_camera.py CLIP PORT

Every frame is JPEG-encoded once at start-up, so serving costs next to no CPU. Any path
serves the stream; /healthz answers 200.
"""

from __future__ import annotations

import http.server
import sys
import time

import cv2


def load(clip: str) -> tuple[list[bytes], float]:
    cap = cv2.VideoCapture(clip)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    cap.release()
    if not frames:
        raise SystemExit(f"{clip}: no frames")
    return frames, fps


def main() -> None:
    frames, fps = load(sys.argv[1])
    port = int(sys.argv[2])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")
                return
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            start, i = time.monotonic(), 0
            try:
                while True:
                    jpg = frames[i % len(frames)]
                    self.wfile.write(
                        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        % len(jpg)
                        + jpg
                        + b"\r\n"
                    )
                    i += 1
                    delay = start + i / fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    print(f"serving {len(frames)} frames at {fps:.1f} fps on :{port}", flush=True)
    http.server.ThreadingHTTPServer(("", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
