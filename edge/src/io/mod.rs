//! Stream wrappers between sockets, SSH channels and the code that reads them, and the accept
//! loop every listener shares: adaptive read buffers, coalescing channel reads, channels that let the client close first, receive windows granted as their reader takes the bytes, bytes put back in front, byte counting, the
//! PROXY protocol header a balancer puts in front of a connection, and a refusal's lingering
//! close, what a peer still sends read and dropped without a buffer while it waits, an HTTP/2 connection's small writes gathered, and channel writes that hand large
//! body chunks over uncopied; request bodies read up to a limit, an over-long one drained
//! before its refusal; a second handle to a socket, to cut a
//! connection off from outside its task; a bound on how long a visitor may leave the edge's
//! writes waiting; a page in place of hyper's bare answer to a request head it cannot read.

pub mod accept;
pub mod channel_writes;
pub mod closing_channel;
pub mod counting;
pub mod cut_off;
pub mod discard;
pub mod idle;
pub mod last_word;
pub mod proxy_header;
pub mod read_buffer;
pub mod receive_window;
pub mod request_body;
pub mod small_writes;
pub mod unreadable_requests;
pub mod write_stall;
