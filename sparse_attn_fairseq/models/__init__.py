"""Model registrations: one module per method. Importing this package registers them all."""

# Architectures this package registers with fairseq (checked by the --user-dir tests).
ARCHITECTURES: tuple = ()
