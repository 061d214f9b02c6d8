"""What reports, invoices, the web pages and Stripe windows read from Postgres."""
