//! The protobuf codec of the kms.v1 services: tonic-prost's, except that a message
//! that does not decode (bytes that are not protobuf, a string that is not UTF-8, a
//! truncated field) is INVALID_ARGUMENT rather than tonic-prost's INTERNAL. Those bytes
//! come from the client, and the contract allows no INTERNAL for anything a client can
//! send. build.rs points the generated servers (and clients) here.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(ProstDecoder::default())
    }
}

/// tonic-prost's decoder with its decode errors reported as INVALID_ARGUMENT. (On the
/// client side, for a response that does not decode, the code is as good as INTERNAL:
/// the message says what happened.)
#[derive(Debug, Clone, Default)]
pub struct MessageDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            // prost's message names the field and the fault, never the content.
            Code::Internal => {
                Status::invalid_argument(format!("the message is malformed: {}", status.message()))
            }
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
