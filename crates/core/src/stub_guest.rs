//! The stub guest: a minimal x86-64 ELF "kernel" that Firecracker boots on any
//! KVM host, including nested ones where a real Linux guest cannot run. It
//! writes one line to the serial port and halts forever. Tests, `banger bench`
//! and `doctor` use it to exercise the real VMM without a real guest.
//! [`pvh_elf`] is the same stub in the form QEMU boots (a PVH entry note).

/// Where the stub's code is linked and entered (16 MiB, above the area
/// Firecracker reserves for boot structures).
pub const LOAD_ADDR: u64 = 0x100_0000;

/// The line the stub writes to the serial port.
pub const BANNER: &str = "banger stub guest: hello";

/// A minimal ELF64 x86-64 executable: prints [`BANNER`] on COM1 (port
/// 0x3f8) and halts forever. Firecracker enters ELF kernels in 64-bit mode.
pub fn elf() -> Vec<u8> {
    let mut code: Vec<u8> = vec![
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0x48, 0x8D, 0x35, 0x0B, 0x00, 0x00, 0x00, // lea rsi, [rip+11] -> msg
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
        0xF4, // done: hlt
        0xEB, 0xFD, // jmp done
    ];
    code.extend_from_slice(BANNER.as_bytes());
    code.extend_from_slice(b"\n\0");

    let code_off = 0x1000u64; // page-aligned file offset
    let mut elf = elf_header(1);
    // PT_LOAD, R+X
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&code_off.to_le_bytes());
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.resize(code_off as usize, 0);
    elf.extend_from_slice(&code);
    elf
}

/// An ELF64 x86-64 executable header entered at [`LOAD_ADDR`], with
/// `phnum` program headers right after it and no sections.
fn elf_header(phnum: u16) -> Vec<u8> {
    let ehdr_size = 64u64;
    let phdr_size = 56u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&ehdr_size.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ehdr_size as u16).to_le_bytes());
    elf.extend_from_slice(&(phdr_size as u16).to_le_bytes());
    elf.extend_from_slice(&phnum.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    elf
}

/// ELF note type `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical address
/// a PVH loader enters the kernel at.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The same stub for QEMU: QEMU's `-kernel` loads an ELF only if it carries
/// a PVH entry note (Linux's `CONFIG_PVH`), and enters it the PVH way — 32-bit
/// protected mode, paging off, flat 4 GiB code and data segments,
/// interrupts off.
///
/// Layout: an ELF64 x86-64 executable (as a Linux vmlinux is) with two
/// program headers:
///
/// - `PT_LOAD` (R+X) at file offset 0x1000, loaded at [`LOAD_ADDR`] (16 MiB):
///   32-bit code (`cli; cld; mov dx, 0x3f8; mov esi, msg; lodsb/out` loop,
///   then `hlt` forever) followed by the NUL-terminated [`BANNER`] line;
/// - `PT_NOTE` right after the headers: one note, name `Xen`, type 18
///   (`XEN_ELFNOTE_PHYS32_ENTRY`), an 8-byte descriptor holding [`LOAD_ADDR`]
///   (QEMU reads a 64-bit value from the note of an ELF64 file).
///
/// `e_entry` is [`LOAD_ADDR`] too, but a PVH loader uses the note.
pub fn pvh_elf() -> Vec<u8> {
    const HEAD: [u8; 7] = [
        0xFA, // cli
        0xFC, // cld
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xBE, // mov esi, imm32 (the message address, below)
    ];
    const LOOP: [u8; 11] = [
        0xAC, // loop: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp loop
        0xF4, // done: hlt
        0xEB, 0xFD, // jmp done
    ];
    let msg_addr = LOAD_ADDR as u32 + (HEAD.len() + 4 + LOOP.len()) as u32;
    let mut code = HEAD.to_vec();
    code.extend_from_slice(&msg_addr.to_le_bytes());
    code.extend_from_slice(&LOOP);
    code.extend_from_slice(BANNER.as_bytes());
    code.extend_from_slice(b"\n\0");

    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz ("Xen\0")
    note.extend_from_slice(&8u32.to_le_bytes()); // n_descsz
    note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&LOAD_ADDR.to_le_bytes());

    let ehdr_size = 64u64;
    let phdr_size = 56u64;
    let note_off = ehdr_size + 2 * phdr_size;
    let code_off = 0x1000u64;
    let mut elf = elf_header(2);
    let mut phdr = |p_type: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
        elf.extend_from_slice(&p_type.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&off.to_le_bytes());
        elf.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        elf.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
        elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
        elf.extend_from_slice(&align.to_le_bytes());
    };
    phdr(1, 5, code_off, LOAD_ADDR, code.len() as u64, 0x1000); // PT_LOAD, R+X
    phdr(4, 4, note_off, 0, note.len() as u64, 4); // PT_NOTE, R
    elf.extend_from_slice(&note);
    elf.resize(code_off as usize, 0);
    elf.extend_from_slice(&code);
    elf
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_an_x86_64_elf_with_the_banner() {
        let e = super::elf();
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([e[18], e[19]]), 62);
        assert!(e
            .windows(super::BANNER.len())
            .any(|w| w == super::BANNER.as_bytes()));
    }

    #[test]
    fn pvh_stub_has_the_entry_note_and_the_banner() {
        let e = super::pvh_elf();
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([e[56], e[57]]), 2, "two program headers");
        // The PT_NOTE header (the second) points at the Xen note.
        let ph = &e[64 + 56..64 + 112];
        assert_eq!(u32::from_le_bytes(ph[..4].try_into().unwrap()), 4);
        let off = u64::from_le_bytes(ph[8..16].try_into().unwrap()) as usize;
        let note = &e[off..off + 24];
        assert_eq!(&note[..12], [4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0]);
        assert_eq!(&note[12..16], b"Xen\0");
        assert_eq!(
            u64::from_le_bytes(note[16..24].try_into().unwrap()),
            super::LOAD_ADDR
        );
        // The message address in `mov esi, imm32` points at the banner.
        let code = &e[0x1000..];
        let msg = u32::from_le_bytes(code[7..11].try_into().unwrap()) as u64;
        let at = (msg - super::LOAD_ADDR) as usize;
        assert!(code[at..].starts_with(super::BANNER.as_bytes()));
    }
}
