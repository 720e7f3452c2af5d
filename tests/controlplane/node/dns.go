package main

// cluster-dns answers the cluster's Service names the way CoreDNS's
// kubernetes plugin does for ClusterIP Services, and nothing else:
//
//	NAME.NAMESPACE.svc.DOMAIN  A     -> the Service's clusterIPs (IPv4)
//	NAME.NAMESPACE.svc.DOMAIN  AAAA  -> no data (the cluster is IPv4 only)
//	anything else under DOMAIN       -> NXDOMAIN
//	anything outside DOMAIN          -> REFUSED (no upstream: the test
//	                                    cluster reaches no other network)
//
// It reads Services through a client-go informer with its own credentials
// (the kube-dns ServiceAccount's bootstrap RBAC), so a Service created
// through the API is resolvable as soon as the watch delivers it.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

const dnsTTL = 5 // seconds: short, so a re-created Service is seen quickly

func newDNSCommand() *cobra.Command {
	var kubeconfig, listen, domain string
	cmd := &cobra.Command{
		Use:          "cluster-dns",
		Short:        "Answers A queries for NAME.NAMESPACE.svc.DOMAIN from the API's Services",
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return serveDNS(ctx, kubeconfig, listen, domain)
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "credentials that may list and watch Services")
	cmd.Flags().StringVar(&listen, "listen", "", "IP:PORT to serve on, UDP and TCP")
	cmd.Flags().StringVar(&domain, "cluster-domain", "cluster.local", "the kubelet's clusterDomain")
	cmd.MarkFlagRequired("kubeconfig")
	cmd.MarkFlagRequired("listen")
	return cmd
}

func serveDNS(ctx context.Context, kubeconfig, listen, domain string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	services := factory.Core().V1().Services()
	lister := services.Lister()
	informer := services.Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return errors.New("services never synced")
	}

	zone := "svc." + strings.TrimSuffix(domain, ".") + "."
	lookup := func(name string) (ips []netip.Addr, inZone, found bool) {
		name = strings.ToLower(name)
		if !strings.HasSuffix(name, "."+zone) {
			return nil, strings.HasSuffix(name, "."+domain+".") || name == domain+".", false
		}
		parts := strings.Split(strings.TrimSuffix(name, "."+zone), ".")
		if len(parts) != 2 {
			return nil, true, false
		}
		svc, err := lister.Services(parts[1]).Get(parts[0])
		if err != nil {
			return nil, true, false
		}
		for _, ip := range clusterIPs(svc) {
			if addr, err := netip.ParseAddr(ip); err == nil && addr.Is4() {
				ips = append(ips, addr)
			}
		}
		return ips, true, true
	}

	udp, err := net.ListenPacket("udp", listen)
	if err != nil {
		return fmt.Errorf("cluster-dns: %w", err)
	}
	tcp, err := net.Listen("tcp", listen)
	if err != nil {
		udp.Close()
		return fmt.Errorf("cluster-dns: %w", err)
	}
	go func() { <-ctx.Done(); udp.Close(); tcp.Close() }()
	go serveTCP(tcp, lookup)
	klog.Infof("cluster-dns serving %s on %s", zone, listen)
	buf := make([]byte, 1500)
	for {
		n, peer, err := udp.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if reply := answer(buf[:n], lookup); reply != nil {
			udp.WriteTo(reply, peer)
		}
	}
}

func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

func serveTCP(ln net.Listener, lookup lookupFunc) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			var size [2]byte
			for {
				if _, err := ioReadFull(conn, size[:]); err != nil {
					return
				}
				msg := make([]byte, int(size[0])<<8|int(size[1]))
				if _, err := ioReadFull(conn, msg); err != nil {
					return
				}
				reply := answer(msg, lookup)
				if reply == nil {
					return
				}
				conn.Write(append([]byte{byte(len(reply) >> 8), byte(len(reply))}, reply...))
			}
		}()
	}
}

func ioReadFull(conn net.Conn, b []byte) (int, error) {
	read := 0
	for read < len(b) {
		n, err := conn.Read(b[read:])
		read += n
		if err != nil {
			return read, err
		}
	}
	return read, nil
}

type lookupFunc func(name string) (ips []netip.Addr, inZone, found bool)

// answer builds the reply to one query message, or nil for a message that
// cannot be parsed (dropped, as resolvers do).
func answer(query []byte, lookup lookupFunc) []byte {
	var p dnsmessage.Parser
	header, err := p.Start(query)
	if err != nil || header.Response {
		return nil
	}
	questions, err := p.AllQuestions()
	if err != nil {
		return nil
	}
	reply := dnsmessage.Message{Header: dnsmessage.Header{
		ID: header.ID, Response: true, OpCode: header.OpCode, RecursionDesired: header.RecursionDesired,
	}, Questions: questions}
	if header.OpCode != 0 || len(questions) != 1 {
		reply.Header.RCode = dnsmessage.RCodeNotImplemented
	} else {
		q := questions[0]
		ips, inZone, found := lookup(q.Name.String())
		switch {
		case !inZone:
			reply.Header.RCode = dnsmessage.RCodeRefused
		case !found:
			reply.Header.Authoritative = true
			reply.Header.RCode = dnsmessage.RCodeNameError
		default:
			reply.Header.Authoritative = true
			if q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
				for _, ip := range ips {
					reply.Answers = append(reply.Answers, dnsmessage.Resource{
						Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: dnsTTL},
						Body:   &dnsmessage.AResource{A: ip.As4()},
					})
				}
			}
		}
	}
	b, err := reply.Pack()
	if err != nil {
		return nil
	}
	return b
}
