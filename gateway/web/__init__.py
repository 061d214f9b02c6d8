"""Web pages served by the gateway: the customer usage portal and the operator dashboard.

Shared base: `render` (Jinja2 with autoescape, the security headers), `sessions` (signed
cookies, CSRF, the signing secret), `static` (the CSS, scripts and vendored Chart.js at
`/static/`), `figures` (how numbers are shown), `templates/base.html` and `macros.html`.
`routes.add_web_routes(app)` wires all of it.
"""
