"""Apps (issue 13): immutable releases of the owner's apps and the apps plane that serves them.

- `bundle.py` reads a deploy (a directory or a .zip) into memory, refusing escapes and oversize;
- `store.py` keeps apps, releases and env in `DATA/apps/apps.db` and file contents by hash in
  `DATA/apps/blobs/`; a release is switched in one transaction;
- `deploy.py` deploys, health-checks, rolls back, and records events;
- `server.py` is the apps plane's ASGI app (routing by Host, static files);
- `plane.py` starts its listeners in the daemon; `tls.py` serves it over TLS with the
  `[[certificates]]` of kernel/, chosen by SNI and reloaded after each renewal.

Nothing here is imported by an idle daemon without apps.
"""
