// Command tlsstorm-engine holds the sender's SMTP connections in compiled code.
//
// Why: per message the Python client spent more than half the CPU of the receiver it measures
// (issue 12), most of it in the client's half of the TLS handshake through OpenSSL and in
// Python's per-command work. The sender still decides what to send and records the results and
// spans; this process only talks SMTP. Protocol: one JSON job per line on stdin (a connection,
// its messages already built), one JSON result per line on stdout, in the order they end.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
)

func main() {
	caFile := flag.String("ca-file", "", "verify the server's chain against this PEM bundle "+
		"(without it any certificate is accepted, as bots do)")
	flag.Parse()
	configs, err := newTLSConfigs(*caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlsstorm-engine:", err)
		os.Exit(2)
	}
	results := make(chan *Result, 1024)
	var writer sync.WaitGroup
	writer.Add(1)
	go func() {
		defer writer.Done()
		writeResults(results)
	}()

	input := bufio.NewScanner(os.Stdin)
	input.Buffer(make([]byte, 1<<20), 64<<20)
	var connections sync.WaitGroup
	for input.Scan() {
		job := &Job{}
		if err := json.Unmarshal(input.Bytes(), job); err != nil {
			fmt.Fprintln(os.Stderr, "tlsstorm-engine: a job that is not JSON:", err)
			os.Exit(2)
		}
		connections.Add(1)
		go func() {
			defer connections.Done()
			results <- converse(job, configs)
		}()
	}
	connections.Wait()
	close(results)
	writer.Wait()
}

// writeResults writes each result as a line, flushing whenever no other result is waiting.
func writeResults(results <-chan *Result) {
	output := bufio.NewWriterSize(os.Stdout, 1<<16)
	encoder := json.NewEncoder(output)
	for result := range results {
		if err := encoder.Encode(result); err != nil {
			fmt.Fprintln(os.Stderr, "tlsstorm-engine:", err)
			os.Exit(2)
		}
		if len(results) == 0 {
			if err := output.Flush(); err != nil {
				os.Exit(0) // the sender has gone
			}
		}
	}
	output.Flush()
}
