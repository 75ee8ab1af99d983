"""Model lifecycle for ML engineers: phantoms → train → evaluate → export → register.

These modules may import ``triage``; ``triage`` never imports them."""
