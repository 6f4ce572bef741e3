//! The stub guest: a minimal x86-64 ELF "kernel" that Firecracker boots on any
//! KVM host, including nested ones where a real Linux guest cannot run. It
//! writes one line to the serial port and halts forever. Tests, `banger bench`
//! and `doctor` use it to exercise the real VMM without a real guest.

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

    let ehdr_size = 64u64;
    let phdr_size = 56u64;
    let code_off = 0x1000u64; // page-aligned file offset
    let mut elf = Vec::new();
    // e_ident
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
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
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
}
