; The lab's test guest: a boot sector that prints an increasing counter on COM1, one line
; every half second, forever, and answers each byte typed on COM1 with a line "echo <byte>". Under TCG inside TCG a distribution would take minutes to boot;
; this is up in the time SeaBIOS takes. A live migration that works never restarts the count.
;
; nasm -f bin -o counter.img counter.asm
bits 16
org 0x7c00

start:
        cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7c00
        sti
        mov si, hello
        call puts
        xor ebx, ebx            ; the counter
.tick:
        inc ebx
        mov si, prefix
        call puts
        mov eax, ebx
        call putdec
        mov si, crlf
        call puts
.echo:                          ; every byte received since the last tick, echoed
        mov dx, 0x3fd
        in al, dx
        test al, 1              ; data ready
        jz .wait
        mov dx, 0x3f8
        in al, dx
        push ax
        mov si, echoed
        call puts
        pop ax
        call putc
        mov si, crlf
        call puts
        jmp .echo
.wait:
        mov ah, 0x86            ; BIOS wait: CX:DX microseconds (0x7a120 = 500 ms)
        mov cx, 0x0007
        mov dx, 0xa120
        int 0x15
        jmp .tick

; eax in decimal on COM1
putdec:
        mov ecx, 10
        xor di, di
.div:
        xor edx, edx
        div ecx
        push dx
        inc di
        test eax, eax
        jnz .div
.out:
        pop ax
        add al, '0'
        call putc
        dec di
        jnz .out
        ret

; the NUL-terminated string at si on COM1
puts:
        lodsb
        test al, al
        jz .done
        call putc
        jmp puts
.done:
        ret

; al on COM1, once its transmitter is empty
putc:
        push dx
        push ax
        mov dx, 0x3fd
.wait:
        in al, dx
        test al, 0x20
        jz .wait
        pop ax
        mov dx, 0x3f8
        out dx, al
        pop dx
        ret

hello:  db "bladevisor test guest", 13, 10, 0
prefix: db "count ", 0
echoed: db "echo ", 0
crlf:   db 13, 10, 0

        times 510 - ($ - $$) db 0
        dw 0xaa55
