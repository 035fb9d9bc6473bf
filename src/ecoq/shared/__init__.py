"""Shared-box mode: a root daemon serves every user's `ecoq` commands over a Unix socket.

The daemon owns the database (readable only by root) and learns each caller's uid from the
kernel (SO_PEERCRED), never from the request. It is a transport in front of the one queue API:
every change still goes through `ecoq.scheduler.queue.Queue`, every read through `ecoq.views`.

- `framing`: length-prefixed frames, size limits, and large texts streamed in bounded frames.
- `protocol`: the wire format (JSON messages, versioned, every field checked) and what travels
  on it; stdlib only, so the client starts fast.
- `access`: who a caller is (peer credentials) and who is an admin (`shared.admins`).
- `backend`: the operations, each authorised: users see and change only their own jobs, and
  report on their own jobs; forecasts come from the daemon's providers and credentials.
- `server`: the threaded socket server `ecoq daemon` runs when `shared.socket` is set.
- `client`: what the CLI uses instead of the database on a shared box.

See docs/shared-box.md.
"""
