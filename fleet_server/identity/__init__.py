"""Device identity: the CA, CSR policy, EST enrollment, renewal, revocation, tokens."""
