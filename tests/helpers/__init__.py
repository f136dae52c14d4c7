"""Plain helpers shared by several test modules (fixtures stay in tests/conftest.py):

- `app`: a TestClient over the app on a migrated database (`app_client`), `bearer` headers;
- `images`: small PNGs to upload or train on;
- `db`: this run's Redis database, PostgreSQL admin access, and work rows made directly in the database;
- `stack`: real service processes (`Stack`, `service_env`, `wait_http`, `BrowserStack`), free ports;
- `api_process`: one uvicorn API process (`start_api`), raw SSE sockets and its memory (hostile load, bench);
- `faults`: what the fault tests break things with (a private redis-server, a TCP proxy, kill, wait_for);
- `engine`: a random non-zero LoRA adapter made the way training makes one; pattern images and the "trained
  together equals trained alone" check;
- `pages` / `browser`: signing in and the rows a worker leaves behind (in-process pages); Playwright pages with
  their CSP check and screenshots;
- `versions`: a style with adapter versions recorded directly, for the versions and rounds API tests.
"""
