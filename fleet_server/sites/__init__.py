"""Sites: commissioning records, checked and stored with their site."""
