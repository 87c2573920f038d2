//! Stream wrappers between sockets, SSH channels and the code that reads them: adaptive
//! read buffers, coalescing channel reads, bytes put back in front, and byte counting.

pub mod counting;
pub mod read_buffer;
