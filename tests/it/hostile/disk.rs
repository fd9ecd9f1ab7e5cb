//! Disks that fill up and writers that fail: the sealed store, the ledger, receipts and audit.
