//! The only module that touches sockets, `mio`, threads, wakers and CPU
//! affinity. Everything it decides, it asks the sans-IO modules.

pub mod echo;
