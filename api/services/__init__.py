"""The API's operations as plain keyword-only functions, one module per resource: `styles`, `jobs`, `adapters`,
`generations`, the admin views (`admin`) and accounts (`accounts`); `uploads` and `lookup` hold what several of
them need. Routes validate, call these, and map errors (api/http/errors.py) to status codes."""
