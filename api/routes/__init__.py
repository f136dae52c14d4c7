"""HTTP routes, one module per area. Routes validate, call api.service / api.admin, and map errors."""
