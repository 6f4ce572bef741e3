//! Files banger takes in: kernel images ([`kernel_image`]), ext4 images
//! ([`ext4`]) and the atomic, copy-on-write-when-possible staging of both into
//! the state directory ([`stage`]).

pub mod ext4;
pub mod kernel_image;
pub mod stage;
