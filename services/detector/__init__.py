"""EAGER: reasoning-trace encoder, failure knowledge base, step-wise detection, diagnosis, mitigation."""
