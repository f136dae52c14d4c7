"""Plain helpers shared by several test modules (fixtures stay in tests/conftest.py); what the benchmarks use
too (images, service processes, one API process, random-weight models) is testkit/:

- `app`: a TestClient over the app on a migrated database (`app_client`), `bearer` headers;
- `db`: this run's Redis database, PostgreSQL admin access, and work rows made directly in the database;
- `faults`: what the fault tests break things with (a private redis-server, a TCP proxy, kill, wait_for);
- `engine`: a random non-zero LoRA adapter made the way training makes one; pattern images and the "trained
  together equals trained alone" check;
- `pages` / `browser`: signing in and the rows a worker leaves behind (in-process pages); Playwright pages with
  their CSP check and screenshots;
- `versions`: a style with adapter versions recorded directly, for the versions and rounds API tests.
"""
