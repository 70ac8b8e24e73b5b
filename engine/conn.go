package main

import (
	"encoding/binary"
	"net"
	"syscall"
	"unsafe"
)

// Offsets into struct tcp_info (linux/tcp.h), as the Python side reads them (common/wire.py).
const (
	tcpInfoSize     = 256
	offBytesAcked   = 120
	offBytesRecv    = 128
	offNotSent      = 144
	offBytesSent    = 200
	offBytesRetrans = 208
)

// wireBytes is the TCP payload received and sent so far (TLS records included), from the
// kernel's TCP_INFO, as the receiver counts it on its side: bytes that arrived count even if
// not yet read (the server's close_notify after QUIT).
func wireBytes(conn net.Conn) (received, sent int64) {
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		return 0, 0
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return 0, 0
	}
	var info [tcpInfoSize]byte
	size := uint32(tcpInfoSize)
	var errno syscall.Errno
	raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP,
			syscall.TCP_INFO, uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	if errno != 0 || size < offBytesRecv+8 {
		return 0, 0
	}
	received = int64(binary.NativeEndian.Uint64(info[offBytesRecv:]))
	if size >= offBytesRetrans+8 {
		sent = int64(binary.NativeEndian.Uint64(info[offBytesSent:])) -
			int64(binary.NativeEndian.Uint64(info[offBytesRetrans:])) +
			int64(binary.NativeEndian.Uint32(info[offNotSent:]))
	} else {
		sent = int64(binary.NativeEndian.Uint64(info[offBytesAcked:]))
	}
	return received, sent
}

// quickAck sets TCP_QUICKACK after a command is written: the kernel would otherwise go back to
// delaying ACKs once we send (see the Python client's note on Postfix and Nagle).
func quickAck(conn net.Conn) {
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}
