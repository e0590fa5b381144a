"""Who may talk to whom: the mesh CA, peer and app identities, invites and revocation."""
