// A minimal MQTT → Kafka forwarder: the compiled baseline of tests/bench/bridge_throughput.py.
//
// Semantics (the forwarder the bridge is compared with): a persistent MQTT session (clean
// session off, QoS 1 subscription), every message produced to Kafka with acks=all
// (idempotent producer) and acknowledged on MQTT only once Kafka acknowledged it; at most
// --inflight messages (1,000) handed to Kafka unacknowledged; no local spool and no per-key
// order across its concurrent sends' retries beyond what the producer gives; it exits after
// five failed sends. The Kafka key is the device (the topic's second level). It prints
// "subscribed" once its subscription stands and "delivered N" every 0.5 s on stdout, so the
// benchmark knows when it is ready and when it is done without asking it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	broker := flag.String("mqtt", "tcp://127.0.0.1:1883", "MQTT broker URL")
	filter := flag.String("filter", "edge/+/raw/+", "MQTT filter (QoS 1)")
	clientID := flag.String("client-id", "compiled-forwarder", "MQTT client id (persistent session)")
	bootstrap := flag.String("bootstrap", "127.0.0.1:9092", "Kafka bootstrap servers")
	topic := flag.String("topic", "edge.raw", "Kafka topic")
	inflight := flag.Int("inflight", 1000, "most messages handed to Kafka unacknowledged")
	linger := flag.Duration("linger", 5*time.Millisecond, "producer linger (fastest here: 5 ms)")
	flag.Parse()

	producer, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*bootstrap, ",")...),
		kgo.RequiredAcks(kgo.AllISRAcks()), // idempotent by default
		kgo.ProducerBatchCompression(kgo.Lz4Compression()),
		kgo.ProducerLinger(*linger),
		kgo.AllowAutoTopicCreation(),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kafka:", err)
		os.Exit(2)
	}
	defer producer.Close()

	var delivered, failed atomic.Int64
	slots := make(chan struct{}, *inflight)
	ctx := context.Background()
	handler := func(_ mqtt.Client, msg mqtt.Message) {
		slots <- struct{}{}
		device := ""
		if parts := strings.SplitN(msg.Topic(), "/", 3); len(parts) > 1 {
			device = parts[1]
		}
		record := &kgo.Record{
			Topic:   *topic,
			Key:     []byte(device),
			Value:   msg.Payload(),
			Headers: []kgo.RecordHeader{{Key: "mqtt_topic", Value: []byte(msg.Topic())}},
		}
		producer.Produce(ctx, record, func(_ *kgo.Record, err error) {
			<-slots
			if err != nil {
				fmt.Fprintln(os.Stderr, "send failed:", err)
				if failed.Add(1) >= 5 {
					os.Exit(1)
				}
				return // unacked: the broker redelivers it to the next session
			}
			msg.Ack()
			delivered.Add(1)
		})
	}

	options := mqtt.NewClientOptions().
		AddBroker(*broker).
		SetClientID(*clientID).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		SetOrderMatters(true).
		SetKeepAlive(30 * time.Second).
		SetAutoReconnect(true)
	options.SetOnConnectHandler(func(c mqtt.Client) {
		if token := c.Subscribe(*filter, 1, handler); token.Wait() && token.Error() != nil {
			fmt.Fprintln(os.Stderr, "subscribe:", token.Error())
			os.Exit(2)
		}
		fmt.Println("subscribed")
	})
	client := mqtt.NewClient(options)
	if token := client.Connect(); token.Wait() && token.Error() != nil {
		fmt.Fprintln(os.Stderr, "mqtt:", token.Error())
		os.Exit(2)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	ticker := time.NewTicker(500 * time.Millisecond)
	for {
		select {
		case <-ticker.C:
			fmt.Printf("delivered %d\n", delivered.Load())
		case <-stop:
			client.Disconnect(250) // the session stays: what is unacked is redelivered
			_ = producer.Flush(ctx)
			fmt.Printf("delivered %d\n", delivered.Load())
			return
		}
	}
}
