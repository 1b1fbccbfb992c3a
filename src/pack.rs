//! Deflated JSON, primed with a dictionary learned from the first typical
//! value: how the controller's cache keeps specs and statuses and the Coder
//! index keeps workspaces.
//!
//! Each value alone deflates poorly: a status of 3 KB of JSON keeps about
//! 1.1 KB, mostly its keys, condition reasons and messages and its
//! template's presets, which every resource of a cluster shares. A deflate
//! stream that starts from one such value as its dictionary keeps of the
//! others mostly what differs (ids, names, times): about a quarter as much
//! for the benchmark's resources. The dictionary is the first value a
//! packer is given as typical, kept for the life of the process; values
//! packed before it was learned are kept without it, and say so.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// One kind of value's dictionary.
pub struct Packer {
    dictionary: OnceLock<Box<[u8]>>,
}

/// A packed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    bytes: Box<[u8]>,
    /// Deflated from the packer's dictionary.
    primed: bool,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Packer {
    pub const fn new() -> Self {
        Self { dictionary: OnceLock::new() }
    }

    /// Packs `json`; when the packer has no dictionary yet and `typical`
    /// says this value is like the others to come, it becomes the dictionary.
    pub fn pack(&self, json: &[u8], typical: bool) -> Packed {
        let dictionary = match self.dictionary.get() {
            Some(dictionary) => Some(dictionary),
            None if typical => Some(self.dictionary.get_or_init(|| json.into())),
            None => None,
        };
        Packed { bytes: deflate(json, dictionary.map(AsRef::as_ref)).into_boxed_slice(), primed: dictionary.is_some() }
    }

    /// The JSON that was packed.
    pub fn unpack(&self, packed: &Packed) -> Vec<u8> {
        let dictionary = if packed.primed {
            Some(self.dictionary.get().expect("a value packed with the dictionary outlives no packer"))
        } else {
            None
        };
        inflate(&packed.bytes, dictionary.map(AsRef::as_ref))
    }
}

impl Default for Packer {
    fn default() -> Self {
        Self::new()
    }
}

/// Raw deflate (no header: the dictionary is known), at the default level.
fn deflate(input: &[u8], dictionary: Option<&[u8]>) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    if let Some(dictionary) = dictionary {
        compress.set_dictionary(dictionary).expect("a dictionary for a new stream");
    }
    let mut output = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(compress.total_in()).unwrap_or(usize::MAX);
        let status =
            compress.compress_vec(&input[consumed..], &mut output, FlushCompress::Finish).expect("deflate into memory");
        if status == Status::StreamEnd {
            output.shrink_to_fit();
            return output;
        }
        output.reserve(output.capacity().max(64));
    }
}

fn inflate(input: &[u8], dictionary: Option<&[u8]>) -> Vec<u8> {
    let mut decompress = Decompress::new(false);
    if let Some(dictionary) = dictionary {
        decompress.set_dictionary(dictionary).expect("a dictionary for a new raw stream");
    }
    let mut output = Vec::with_capacity(input.len() * 4);
    loop {
        let consumed = usize::try_from(decompress.total_in()).unwrap_or(usize::MAX);
        let status = decompress
            .decompress_vec(&input[consumed..], &mut output, FlushDecompress::Finish)
            .expect("inflate what this process deflated");
        if status == Status::StreamEnd {
            return output;
        }
        output.reserve(output.capacity().max(256));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, at: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "phase": "Running",
            "workspace": {"id": id, "name": format!("chat-{id}"), "owner": "alice"},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Running",
                 "message": "The workspace is running and agent main is ready.", "lastTransitionTime": at},
                {"type": "Degraded", "status": "False", "reason": "AsExpected",
                 "message": "Nothing needs a person's attention.", "lastTransitionTime": at},
                {"type": "AgentConnected", "status": "True", "reason": "Connected",
                 "message": "Agent main is connected.", "lastTransitionTime": at},
            ],
        }))
        .expect("json")
    }

    #[test]
    fn what_is_packed_comes_back_with_or_without_the_dictionary() {
        let packer = Packer::new();
        let before = status("0b7c5d1e-6a4f-4c1b-9d2e-3f4a5b6c7d8e", "2026-12-01T10:00:00Z");
        let unprimed = packer.pack(&before, false);
        assert!(!unprimed.primed, "nothing typical seen yet");
        let first = packer.pack(&before, true);
        let second = status("1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "2026-12-01T11:30:00Z");
        let primed = packer.pack(&second, false);
        assert!(first.primed && primed.primed);
        assert_eq!(packer.unpack(&unprimed), before);
        assert_eq!(packer.unpack(&first), before);
        assert_eq!(packer.unpack(&primed), second);
    }

    #[test]
    fn a_value_like_the_dictionary_keeps_little_more_than_what_differs() {
        let packer = Packer::new();
        packer.pack(&status("0b7c5d1e-6a4f-4c1b-9d2e-3f4a5b6c7d8e", "2026-12-01T10:00:00Z"), true);
        let other = status("1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "2026-12-01T11:30:00Z");
        let alone = deflate(&other, None).len();
        let primed = packer.pack(&other, false).len();
        assert!(primed * 3 < alone, "{primed} bytes with the dictionary, {alone} without");
    }
}
