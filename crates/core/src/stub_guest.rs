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
    elf64(&code)
}

/// The start of every line the counter stubs print; the number follows.
pub const COUNTER_PREFIX: &str = "banger stub counter ";

/// The delay between two counter lines, in TSC cycles (`rdtsc` deltas):
/// 2^28, about 0.1 s at 2.7 GHz. A TSC delay rather than a fixed loop
/// count, because a loop's speed differs a thousandfold between a KVM host
/// and the nested paravirtual KVM of the CI machines.
pub const COUNTER_DELAY_CYCLES: u32 = 0x1000_0000;

/// The part both counter stubs share (the same bytes in 64-bit and 32-bit
/// mode, its jumps all inside it): with `rsi`/`esi` at the prefix and the
/// count in `ebx`, print the prefix, the count as ten decimal digits and a
/// newline on COM1.
const PRINT_LINE: &[u8] = &[
    0xac, 0x84, 0xc0, 0x74, 0x07, // pre: lodsb; test al, al; jz num
    0x66, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xf4, // mov dx, 0x3f8; out dx, al; jmp pre
    0xb9, 0x00, 0xca, 0x9a, 0x3b, // num: mov ecx, 1000000000
    0xbe, 0x0a, 0x00, 0x00, 0x00, // mov esi, 10
    0x89, 0xd8, 0x31, 0xd2, 0xf7, 0xf1, // digit: mov eax, ebx; xor edx, edx; div ecx
    0x31, 0xd2, 0xf7, 0xf6, // xor edx, edx; div esi
    0x8d, 0x42, 0x30, // lea eax, [rdx+0x30] (edx in 32-bit mode)
    0x66, 0xba, 0xf8, 0x03, 0xee, // mov dx, 0x3f8; out dx, al
    0x89, 0xc8, 0x31, 0xd2, 0xf7, 0xf6, // mov eax, ecx; xor edx, edx; div esi
    0x89, 0xc1, 0x85, 0xc9, 0x75, 0xe2, // mov ecx, eax; test ecx, ecx; jnz digit
    0xb0, 0x0a, 0x66, 0xba, 0xf8, 0x03, 0xee, // mov al, 10; mov dx, 0x3f8; out dx, al
];

/// A counter stub for Firecracker: prints `COUNTER_PREFIX` and a 10-digit
/// decimal counter (from 0) on COM1, one line each [`COUNTER_DELAY_CYCLES`],
/// forever. The counter lives in a register, so after a pause and resume
/// (or a snapshot restore) the next line is the last one + 1: memory and
/// CPU state went on, the guest did not boot again.
///
/// ```text
///     xor ebx, ebx                  ; counter
/// next:
///     lea rsi, [rip+msg]            ; the prefix
/// pre: lodsb; test al, al; jz num; mov dx, 0x3f8; out dx, al; jmp pre
/// num: mov ecx, 1000000000; mov esi, 10
/// digit:                           ; (ebx / ecx) % 10, from 10^9 down
///     mov eax, ebx; xor edx, edx; div ecx; xor edx, edx; div esi
///     lea eax, [rdx+'0']; mov dx, 0x3f8; out dx, al
///     mov eax, ecx; xor edx, edx; div esi; mov ecx, eax; test ecx, ecx; jnz digit
///     mov al, 10; mov dx, 0x3f8; out dx, al
///     inc ebx
///     rdtsc; shl rdx, 32; or rax, rdx; mov rdi, rax
/// wait:
///     pause; rdtsc; shl rdx, 32; or rax, rdx; sub rax, rdi
///     cmp rax, COUNTER_DELAY_CYCLES; jb wait
///     jmp next
/// msg: COUNTER_PREFIX, 0
/// ```
pub fn counter_elf() -> Vec<u8> {
    let d = COUNTER_DELAY_CYCLES.to_le_bytes();
    let mut code: Vec<u8> = vec![
        0x31, 0xdb, // xor ebx, ebx
        0x48, 0x8d, 0x35, 0x61, 0x00, 0x00, 0x00, // next: lea rsi, [rip+0x61] -> msg
    ];
    code.extend_from_slice(PRINT_LINE);
    code.extend_from_slice(&[
        0xff, 0xc3, // inc ebx
        0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, // rdtsc; shl rdx, 32
        0x48, 0x09, 0xd0, 0x48, 0x89, 0xc7, // or rax, rdx; mov rdi, rax
        0xf3, 0x90, 0x0f, 0x31, // wait: pause; rdtsc
        0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, // shl rdx, 32; or rax, rdx
        0x48, 0x29, 0xf8, // sub rax, rdi
        0x48, 0x3d, d[0], d[1], d[2], d[3], // cmp rax, imm32
        0x72, 0xea, // jb wait
        0xeb, 0x98, // jmp next
    ]);
    debug_assert_eq!(
        code.len(),
        0x6a,
        "the lea's displacement assumes msg at 0x6a"
    );
    code.extend_from_slice(COUNTER_PREFIX.as_bytes());
    code.push(0);
    elf64(&code)
}

/// [`counter_elf`] in the form QEMU boots (PVH: 32-bit protected mode, so
/// the TSC delay compares the low 32 bits, which wrap harmlessly).
pub fn counter_pvh_elf() -> Vec<u8> {
    const HEAD_LEN: usize = 88;
    let msg = (LOAD_ADDR as u32 + HEAD_LEN as u32).to_le_bytes();
    let d = COUNTER_DELAY_CYCLES.to_le_bytes();
    let mut code: Vec<u8> = vec![
        0xfa, 0xfc, 0x31, 0xdb, // cli; cld; xor ebx, ebx
        0xbe, msg[0], msg[1], msg[2], msg[3], // next: mov esi, msg
    ];
    code.extend_from_slice(PRINT_LINE);
    code.extend_from_slice(&[
        0x43, // inc ebx
        0x0f, 0x31, 0x89, 0xc7, // rdtsc; mov edi, eax
        0xf3, 0x90, 0x0f, 0x31, 0x29, 0xf8, // wait: pause; rdtsc; sub eax, edi
        0x3d, d[0], d[1], d[2], d[3], // cmp eax, imm32
        0x72, 0xf3, // jb wait
        0xeb, 0xac, // jmp next
    ]);
    debug_assert_eq!(code.len(), HEAD_LEN);
    code.extend_from_slice(COUNTER_PREFIX.as_bytes());
    code.push(0);
    pvh(&code)
}

/// The counter values in a console log, in order (lines that are not
/// complete counter lines are skipped).
pub fn counter_values(console: &str) -> Vec<u64> {
    console
        .split('\n')
        .filter_map(|l| l.strip_prefix(COUNTER_PREFIX))
        .filter(|n| n.len() == 10)
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `code` as an ELF64 x86-64 executable loaded and entered at [`LOAD_ADDR`].
fn elf64(code: &[u8]) -> Vec<u8> {
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
    elf.extend_from_slice(code);
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
    pvh(&code)
}

/// `code` (32-bit, entered at [`LOAD_ADDR`]) as a PVH-bootable ELF.
fn pvh(code: &[u8]) -> Vec<u8> {
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
    elf.extend_from_slice(code);
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
    fn counter_stubs_carry_the_prefix_and_parse_back() {
        for e in [super::counter_elf(), super::counter_pvh_elf()] {
            assert_eq!(&e[..4], b"\x7fELF");
            let code = &e[0x1000..];
            assert!(code.ends_with(format!("{}\0", super::COUNTER_PREFIX).as_bytes()));
        }
        // The 32-bit form's `mov esi, imm32` points at the prefix.
        let code = &super::counter_pvh_elf()[0x1000..];
        let msg = u32::from_le_bytes(code[5..9].try_into().unwrap()) as u64;
        let at = (msg - super::LOAD_ADDR) as usize;
        assert!(code[at..].starts_with(super::COUNTER_PREFIX.as_bytes()));
        let log =
            "banger stub counter 0000000041\nbanger stub counter 0000000042\nbanger stub coun";
        assert_eq!(super::counter_values(log), [41, 42]);
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
