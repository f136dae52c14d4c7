"""HTTP routes, one module per area. Routes validate, call api.services.<resource>, and map errors."""
