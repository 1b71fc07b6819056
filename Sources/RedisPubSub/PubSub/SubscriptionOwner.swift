/// The subscriber a subscription belongs to, as its ``Subscription`` sees it: a single-node ``Subscriber`` or a
/// ``ClusterSubscriber``. Callable from any thread; each call hops to the owner's event loop.
protocol SubscriptionOwner: AnyObject, Sendable {
    /// Adds `keys` to a live subscription; `pending` succeeds once the server confirmed every one of them.
    func addKeys(_ keys: [ChannelKey], to sink: SubscriptionSink, _ pending: Pending<Void>)
    /// Takes `keys` out of a live subscription; `completion` runs once the server acknowledged what that needed.
    func removeKeys(_ keys: [ChannelKey], from sink: SubscriptionSink, completion: @escaping @Sendable () -> Void)
    /// Ends a subscription; `completion` runs once the server acknowledged the unsubscribes it needed.
    func remove(_ sink: SubscriptionSink, completion: @escaping @Sendable () -> Void)
}
