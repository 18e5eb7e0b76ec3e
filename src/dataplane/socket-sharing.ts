// How listeners share their port (SPEC §11). In a data-plane worker every worker binds every
// listener (endpoint ports and DNS) with SO_REUSEPORT and the kernel spreads new connections and
// datagrams over them; in one process (tests, embedding) nothing is shared. Module state is per
// thread: a worker sets it once at start, before it binds anything.
export const socketSharing = { reusePort: false }
