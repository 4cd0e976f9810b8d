/** A minimal typed event emitter: `on(event, fn)` returns the function that removes `fn`. */
export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private listeners: { [K in keyof Events]?: Set<(e: Events[K]) => void> } = {};

  on<K extends keyof Events>(event: K, fn: (e: Events[K]) => void): () => void {
    let set = this.listeners[event];
    if (!set) this.listeners[event] = set = new Set();
    set.add(fn);
    return () => {
      set.delete(fn);
    };
  }

  /** Calls every listener; a listener that throws is reported to `onListenerError`, never to the caller. */
  protected emit<K extends keyof Events>(event: K, e: Events[K]): void {
    const set = this.listeners[event];
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(e);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  protected onListenerError(err: unknown): void {
    // A listener's bug must not break the client's message loop.
    console.error("tickwire: an event listener threw", err);
  }
}
