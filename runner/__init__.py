"""Ray driver, job specs, ledger, backends and the pgolf CLI."""
