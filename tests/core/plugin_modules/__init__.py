"""Small plugin modules the core tests load through real entry points."""
