//! Hostile clients on the network: idle sockets, open-proxy attempts, bad ports, SNI games.
