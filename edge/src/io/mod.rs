//! Stream wrappers between sockets, SSH channels and the code that reads them: adaptive
//! read buffers, coalescing channel reads, channels that let the client close first, bytes put back in front, byte counting, and the
//! PROXY protocol header a balancer puts in front of a connection.

pub mod closing_channel;
pub mod counting;
pub mod idle;
pub mod proxy_header;
pub mod read_buffer;
