// Hands every block of microphone samples (mono, the context's rate) to the page, which
// turns them into 16-bit PCM: the browser's own recorder makes webm/opus, which the server
// does not decode.
class PcmTap extends AudioWorkletProcessor {
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch && ch.length) this.port.postMessage(ch.slice(0));
    return true;
  }
}
registerProcessor('pcm-tap', PcmTap);
