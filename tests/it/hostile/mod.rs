//! Hostile inputs, full disks and careless operators (veil#10): each fault found by attacking
//! veil becomes a regression test named after its input. Everything runs on loopback and is
//! bounded in time; the disk-full cases mount a small tmpfs when the tests run as root and say
//! so visibly (ignored, with the reason) otherwise.

mod disk;
mod net;
mod recording;
mod redact;
