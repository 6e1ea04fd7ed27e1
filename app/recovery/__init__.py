"""Account recovery: password reset by an emailed single-use token."""
